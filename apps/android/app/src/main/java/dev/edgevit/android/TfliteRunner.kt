package dev.edgevit.android

import android.content.Context
import com.google.ai.edge.litert.Accelerator
import com.google.ai.edge.litert.CompiledModel
import com.google.ai.edge.litert.TensorBuffer
import dev.edgevit.core.ArtifactDigest
import dev.edgevit.core.ArtifactMetadata
import dev.edgevit.core.Classification
import dev.edgevit.core.EdgeVitException
import dev.edgevit.core.InputTensor
import dev.edgevit.core.Quantization
import dev.edgevit.core.TensorInfo
import dev.edgevit.core.TfliteMetadata

/**
 * Runs a `.tflite` artifact from the app's assets with LiteRT's CompiledModel API on the CPU
 * (XNNPACK). The edgevit metadata and the input/output tensor types are read from the flatbuffer
 * by the core module; int8/uint8 tensors are (de)quantised with their own scale and zero point.
 */
class TfliteRunner(context: Context, assetName: String) : ModelRunner {
    override val metadata: ArtifactMetadata
    override val engine = "LiteRT CPU"

    private val input: TensorInfo
    private val output: TensorInfo
    private val model: CompiledModel
    private val inputBuffers: List<TensorBuffer>
    private val outputBuffers: List<TensorBuffer>

    init {
        val bytes = context.assets.open(assetName).use { it.readBytes() }
        metadata = TfliteMetadata.read(bytes, assetName)
        // LiteRT does not verify the flatbuffer: check the export's SHA-256 before it sees the bytes.
        ArtifactDigest.verify(bytes, assetName)
        val inputs = TfliteMetadata.inputs(bytes, assetName)
        val outputs = TfliteMetadata.outputs(bytes, assetName)
        if (inputs.size != 1 || outputs.isEmpty()) {
            throw EdgeVitException(
                "$assetName has ${inputs.size} inputs and ${outputs.size} outputs; an edgevit " +
                    "classifier has one image input and a logits output",
            )
        }
        input = inputs[0]
        output = outputs[0]
        // One score per label, or the app would show the wrong names (an artifact for other classes).
        Classification.checkClassScores(output.shape(), metadata.numClasses(), assetName)
        if (input.perChannel || output.perChannel) {
            throw EdgeVitException("$assetName quantises its input or output per channel; re-export it with edgevit")
        }
        val expected = metadata.inputShape()
        if (!input.shape().contentEquals(expected)) {
            throw EdgeVitException(
                "$assetName input is ${input.shape().contentToString()} but its metadata says " +
                    "${expected.contentToString()}; re-export it with edgevit",
            )
        }
        model = CompiledModel.create(context.assets, assetName, CompiledModel.Options(Accelerator.CPU))
        inputBuffers = model.createInputBuffers()
        outputBuffers = model.createOutputBuffers()
    }

    override fun run(input: InputTensor): FloatArray {
        val buffer = inputBuffers[0]
        val tensor = this.input
        when {
            input.isFloat && tensor.dtype == "float32" -> buffer.writeFloat(input.floats())
            input.isFloat && tensor.isQuantized && tensor.dtype == "int8" ->
                buffer.writeInt8(Quantization.quantize(input.floats(), tensor.scale, tensor.zeroPoint.toInt(), -128, 127))
            input.isFloat && tensor.isQuantized && tensor.dtype == "uint8" ->
                buffer.writeInt8(Quantization.quantize(input.floats(), tensor.scale, tensor.zeroPoint.toInt(), 0, 255))
            !input.isFloat && tensor.dtype == "uint8" -> buffer.writeInt8(input.bytes()) // fused-input frame
            else -> throw EdgeVitException(
                "cannot feed a ${input.dtype()} tensor to the model's ${tensor.dtype} input " +
                    "(metadata input_dtype ${metadata.inputDtype})",
            )
        }
        model.run(inputBuffers, outputBuffers)
        val out = outputBuffers[0]
        return when {
            output.dtype == "float32" -> out.readFloat()
            output.isQuantized && (output.dtype == "int8" || output.dtype == "uint8") ->
                Quantization.dequantize(out.readInt8(), output.dtype == "int8", output.scale, output.zeroPoint.toInt())
            else -> throw EdgeVitException("unsupported output tensor type ${output.dtype}")
        }
    }

    override fun close() {
        inputBuffers.forEach { it.close() }
        outputBuffers.forEach { it.close() }
        model.close()
    }
}
