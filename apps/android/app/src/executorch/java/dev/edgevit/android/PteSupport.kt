package dev.edgevit.android

import android.content.Context

/** This build includes ExecuTorch's Android runtime (-Pedgevit.executorch=true). */
object PteSupport {
    fun open(context: Context, assetName: String): ModelRunner = ExecuTorchRunner(context, assetName)
}
