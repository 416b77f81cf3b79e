package dev.edgevit.android

import android.content.Context
import dev.edgevit.core.EdgeVitException

/** This build has no ExecuTorch runtime (the default, LiteRT-only APK). */
object PteSupport {
    fun open(context: Context, assetName: String): ModelRunner =
        throw EdgeVitException(
            "$assetName is an ExecuTorch program but this APK was built without ExecuTorch; " +
                "rebuild with -Pedgevit.executorch=true, or export a .tflite instead",
        )
}
