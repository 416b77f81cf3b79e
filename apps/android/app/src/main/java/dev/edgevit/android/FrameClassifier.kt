package dev.edgevit.android

import android.os.SystemClock
import dev.edgevit.core.Classification
import dev.edgevit.core.Prediction
import dev.edgevit.core.Preprocessor

/** Preprocess an ARGB frame with the artifact's own settings, run it, rank the classes. */
class FrameClassifier(private val runner: ModelRunner) : AutoCloseable {
    private val preprocessor = Preprocessor(runner.metadata)

    data class Result(val top: List<Prediction>, val preprocessMs: Double, val inferenceMs: Double)

    fun classify(argb: IntArray, width: Int, height: Int, k: Int = 5): Result {
        val t0 = SystemClock.elapsedRealtimeNanos()
        val input = preprocessor.apply(argb, width, height)
        val t1 = SystemClock.elapsedRealtimeNanos()
        val logits = runner.run(input)
        val t2 = SystemClock.elapsedRealtimeNanos()
        val top = Classification.topK(logits, runner.metadata, k)
        return Result(top, (t1 - t0) / 1e6, (t2 - t1) / 1e6)
    }

    override fun close() = runner.close()
}
