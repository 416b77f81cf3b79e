package dev.edgevit.android

import android.content.Context
import dev.edgevit.core.ArtifactMetadata
import dev.edgevit.core.EdgeVitException
import dev.edgevit.core.InputTensor
import java.io.File
import java.io.FileNotFoundException
import org.pytorch.executorch.EValue
import org.pytorch.executorch.Module
import org.pytorch.executorch.Tensor

/**
 * Runs a `.pte` artifact with ExecuTorch's Android runtime (XNNPACK and portable kernels are in
 * the AAR). The metadata comes from `NAME.json` beside `NAME.pte` in the assets: the JSON that
 * `edgevit.runtimes.load("NAME.pte").metadata.to_json()` prints.
 */
class ExecuTorchRunner(context: Context, assetName: String) : ModelRunner {
    override val metadata: ArtifactMetadata
    override val engine = "ExecuTorch"
    private val module: Module

    init {
        val sidecar = assetName.removeSuffix(".pte") + ".json"
        metadata = try {
            ArtifactMetadata.fromJson(context.assets.open(sidecar).use { it.readBytes() })
        } catch (e: FileNotFoundException) {
            throw EdgeVitException(
                "$assetName needs its metadata beside it as $sidecar (see the README: " +
                    "edgevit.runtimes.load(...).metadata.to_json())",
                e,
            )
        }
        // Module.load takes a file path: copy the asset out of the APK once.
        val file = File(context.filesDir, assetName)
        val size = context.assets.openFd(assetName).use { it.length }
        if (!file.exists() || file.length() != size) {
            context.assets.open(assetName).use { input -> file.outputStream().use { input.copyTo(it) } }
        }
        module = Module.load(file.absolutePath)
    }

    override fun run(input: InputTensor): FloatArray {
        val shape = input.shape().map { it.toLong() }.toLongArray()
        val tensor = if (input.isFloat) Tensor.fromBlob(input.floats(), shape) else Tensor.fromBlobUnsigned(input.bytes(), shape)
        val outputs = module.forward(EValue.from(tensor))
        return outputs[0].toTensor().dataAsFloatArray
    }

    override fun close() = module.destroy()
}
