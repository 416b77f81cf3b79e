package dev.edgevit.android

import android.Manifest
import android.content.pm.PackageManager
import android.graphics.Bitmap
import android.graphics.Matrix
import android.os.Bundle
import android.os.SystemClock
import android.util.Log
import android.util.Size
import android.widget.TextView
import androidx.activity.result.contract.ActivityResultContracts
import androidx.appcompat.app.AppCompatActivity
import androidx.camera.core.CameraSelector
import androidx.camera.core.ImageAnalysis
import androidx.camera.core.ImageProxy
import androidx.camera.core.Preview
import androidx.camera.core.resolutionselector.ResolutionSelector
import androidx.camera.core.resolutionselector.ResolutionStrategy
import androidx.camera.lifecycle.ProcessCameraProvider
import androidx.camera.view.PreviewView
import androidx.core.content.ContextCompat
import java.util.Locale
import java.util.concurrent.ExecutorService
import java.util.concurrent.Executors

/**
 * Live camera classifier: CameraX preview plus an ImageAnalysis stream that keeps only the latest
 * frame (inference never queues frames up), classified with the artifact's own preprocessing;
 * the top-5 labels, scores and latencies are shown over the preview.
 */
class MainActivity : AppCompatActivity() {
    private lateinit var previewView: PreviewView
    private lateinit var resultsView: TextView
    private val analysisExecutor: ExecutorService = Executors.newSingleThreadExecutor()

    // Touched only on analysisExecutor.
    private var classifier: FrameClassifier? = null
    private var engine = ""
    private var pixels = IntArray(0)
    private var smoothedPre = 0.0
    private var smoothedInfer = 0.0
    private var lastFrameAt = 0L
    private var smoothedFps = 0.0

    private val requestPermission =
        registerForActivityResult(ActivityResultContracts.RequestPermission()) { granted ->
            if (granted) startCamera() else resultsView.setText(R.string.camera_permission_denied)
        }

    override fun onCreate(savedInstanceState: Bundle?) {
        super.onCreate(savedInstanceState)
        setContentView(R.layout.activity_main)
        previewView = findViewById(R.id.preview)
        resultsView = findViewById(R.id.results)

        analysisExecutor.execute {
            try {
                val runner = ModelLoader.open(applicationContext)
                classifier = FrameClassifier(runner)
                engine = runner.engine
                val m = runner.metadata
                show("${m.model} (${m.target} ${m.precision}, ${m.inputHeight}x${m.inputWidth} ${m.colorMode}) " +
                    "on ${runner.engine}\nwaiting for frames…")
            } catch (e: Exception) {
                Log.e(TAG, "model failed to load", e)
                show("Model failed to load:\n${e.message}")
            }
        }

        if (ContextCompat.checkSelfPermission(this, Manifest.permission.CAMERA) == PackageManager.PERMISSION_GRANTED) {
            startCamera()
        } else {
            requestPermission.launch(Manifest.permission.CAMERA)
        }
    }

    private fun startCamera() {
        val providerFuture = ProcessCameraProvider.getInstance(this)
        providerFuture.addListener({
            val provider = providerFuture.get()
            val preview = Preview.Builder().build().also { it.setSurfaceProvider(previewView.surfaceProvider) }
            // Frames around 640x480 are plenty for 224-256 px models and keep preprocessing cheap.
            val resolution = ResolutionSelector.Builder()
                .setResolutionStrategy(
                    ResolutionStrategy(Size(640, 480), ResolutionStrategy.FALLBACK_RULE_CLOSEST_HIGHER_THEN_LOWER),
                )
                .build()
            val analysis = ImageAnalysis.Builder()
                .setResolutionSelector(resolution)
                .setBackpressureStrategy(ImageAnalysis.STRATEGY_KEEP_ONLY_LATEST)
                .setOutputImageFormat(ImageAnalysis.OUTPUT_IMAGE_FORMAT_RGBA_8888)
                .build()
            analysis.setAnalyzer(analysisExecutor, ::analyze)
            try {
                provider.unbindAll()
                provider.bindToLifecycle(this, CameraSelector.DEFAULT_BACK_CAMERA, preview, analysis)
            } catch (e: Exception) {
                Log.e(TAG, "camera failed to start", e)
                show("Camera failed to start:\n${e.message}")
            }
        }, ContextCompat.getMainExecutor(this))
    }

    private fun analyze(image: ImageProxy) {
        val clf = classifier
        if (clf == null) {
            image.close()
            return
        }
        val frame: Bitmap = image.use { uprightBitmap(it) }
        val w = frame.width
        val h = frame.height
        if (pixels.size != w * h) pixels = IntArray(w * h)
        frame.getPixels(pixels, 0, w, 0, 0, w, h)
        try {
            val r = clf.classify(pixels, w, h, TOP_K)
            val now = SystemClock.elapsedRealtime()
            val fps = if (lastFrameAt > 0) 1000.0 / (now - lastFrameAt).coerceAtLeast(1) else 0.0
            lastFrameAt = now
            smoothedPre = smooth(smoothedPre, r.preprocessMs)
            smoothedInfer = smooth(smoothedInfer, r.inferenceMs)
            smoothedFps = smooth(smoothedFps, fps)
            val lines = r.top.joinToString("\n") { p ->
                String.format(Locale.ROOT, "%5.1f%%  %s", p.score * 100f, p.label)
            }
            show(lines + String.format(
                Locale.ROOT,
                "\n\n%s  infer %.1f ms  pre %.1f ms  %.1f fps  (%dx%d)",
                engine, smoothedInfer, smoothedPre, smoothedFps, w, h,
            ))
        } catch (e: Exception) {
            Log.e(TAG, "inference failed", e)
            show("Inference failed:\n${e.message}")
        }
    }

    /** The frame as an ARGB bitmap, rotated upright as the user sees it. */
    private fun uprightBitmap(image: ImageProxy): Bitmap {
        val bitmap = image.toBitmap()
        val degrees = image.imageInfo.rotationDegrees
        if (degrees == 0) return bitmap
        val m = Matrix().apply { postRotate(degrees.toFloat()) }
        return Bitmap.createBitmap(bitmap, 0, 0, bitmap.width, bitmap.height, m, false)
    }

    private fun smooth(old: Double, new: Double) = if (old == 0.0) new else 0.9 * old + 0.1 * new

    private fun show(text: String) = runOnUiThread { resultsView.text = text }

    override fun onDestroy() {
        super.onDestroy()
        analysisExecutor.execute { classifier?.close(); classifier = null }
        analysisExecutor.shutdown()
    }

    companion object {
        private const val TAG = "edgevit"
        private const val TOP_K = 5
    }
}
