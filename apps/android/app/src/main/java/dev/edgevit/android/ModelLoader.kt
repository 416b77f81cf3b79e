package dev.edgevit.android

import android.content.Context
import dev.edgevit.core.EdgeVitException

/** Finds the model asset and opens it with the runtime its suffix calls for. */
object ModelLoader {
    fun open(context: Context, requested: String = BuildConfig.MODEL_ASSET): ModelRunner {
        val assets = context.assets.list("")?.toList().orEmpty()
        val name = requested.ifEmpty {
            assets.sorted().firstOrNull { it.endsWith(".tflite") }
                ?: assets.sorted().firstOrNull { it.endsWith(".pte") }
                ?: throw EdgeVitException(
                    "no model in the app's assets: export one with `edgevit export MODEL --target tflite " +
                        "--out apps/android/app/src/main/assets/` and rebuild",
                )
        }
        if (name !in assets) {
            throw EdgeVitException("asset $name not found (assets: ${assets.joinToString()})")
        }
        return when {
            name.endsWith(".tflite") -> TfliteRunner(context, name)
            name.endsWith(".pte") -> PteSupport.open(context, name)
            else -> throw EdgeVitException("$name: the app runs .tflite (LiteRT) and .pte (ExecuTorch) artifacts")
        }
    }
}
