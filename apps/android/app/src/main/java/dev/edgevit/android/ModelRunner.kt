package dev.edgevit.android

import dev.edgevit.core.ArtifactMetadata
import dev.edgevit.core.InputTensor

/** One loaded artifact: its metadata and a forward pass from a preprocessed tensor to logits. */
interface ModelRunner : AutoCloseable {
    /** The artifact's own metadata: labels, input size, preprocessing. */
    val metadata: ArtifactMetadata

    /** What runs the model, for the on-screen status line (e.g. "LiteRT CPU"). */
    val engine: String

    /** Logits for one image (batch of one). */
    fun run(input: InputTensor): FloatArray
}
