package dev.edgevit.core;

/**
 * The reference preprocessing of {@code edgevit.preprocess}, for ARGB pixels (what Android's
 * {@code Bitmap.getPixels} returns): convert to the artifact's colour mode, resize the shorter
 * side to {@code floor(size / crop_pct)} with the artifact's interpolation, centre-crop to the
 * input size, scale to [0, 1], normalise with mean/std and lay out as NCHW or NHWC. A fused-input
 * artifact normalises inside the model and takes the cropped uint8 NHWC frame.
 *
 * <p>Every step matches Pillow's integer arithmetic (colour conversion, alpha compositing over
 * white, resampling, zero-filled crop), and the float steps use float32 in the same order as
 * numpy, so the output equals the Python runtime's tensor.
 */
public final class Preprocessor {
    private final ArtifactMetadata meta;
    private final Resampler.Filter filter;
    private final float[] mean;
    private final float[] std;

    public Preprocessor(ArtifactMetadata meta) {
        this.meta = meta;
        this.filter = Resampler.Filter.fromName(meta.interpolation);
        double[] m = meta.mean();
        double[] s = meta.std();
        this.mean = new float[m.length];
        this.std = new float[s.length];
        for (int i = 0; i < m.length; i++) {
            mean[i] = (float) m[i];
            std[i] = (float) s[i];
        }
    }

    public ArtifactMetadata metadata() {
        return meta;
    }

    /** The input tensor for one image given as {@code width * height} ARGB pixels, row-major. */
    public InputTensor apply(int[] argb, int width, int height) {
        checkImage(argb, width, height);
        int c = meta.channels();
        byte[] pixels = toColorMode(argb, width, height, meta.colorMode);
        byte[] cropped = resizeAndCrop(pixels, width, height);
        int th = meta.inputHeight;
        int tw = meta.inputWidth;
        if (meta.fusedInput) {
            return InputTensor.ofBytes(new int[] {1, th, tw, c}, cropped);
        }
        return InputTensor.ofFloats(meta.inputShape(), normalize(cropped, th, tw, c));
    }

    /** Resize (shorter side to {@code floor(min(size) / crop_pct)}) and centre-crop HWC pixels. */
    public byte[] resizeAndCrop(byte[] hwc, int width, int height) {
        int c = meta.channels();
        int[] size = resizedSize(width, height, meta);
        int nw = size[0];
        int nh = size[1];
        byte[] resized = (nw == width && nh == height) ? hwc
                : Resampler.resize(hwc, width, height, c, nw, nh, filter);
        int th = meta.inputHeight;
        int tw = meta.inputWidth;
        // Python's round() rounds halves to even, as Math.rint does.
        int left = (int) Math.rint((nw - tw) / 2.0);
        int top = (int) Math.rint((nh - th) / 2.0);
        return crop(resized, nw, nh, c, left, top, tw, th);
    }

    /** (width, height) after resizing the shorter side, exactly as {@code resize_and_crop} computes it. */
    public static int[] resizedSize(int width, int height, ArtifactMetadata meta) {
        int scaleSize = (int) Math.floor(Math.min(meta.inputHeight, meta.inputWidth) / meta.cropPct);
        if (width <= height) {
            return new int[] {scaleSize, Math.max(1, (int) ((double) ((long) scaleSize * height) / width))};
        }
        return new int[] {Math.max(1, (int) ((double) ((long) scaleSize * width) / height)), scaleSize};
    }

    /** Crop a {@code cw x ch} window at (left, top); pixels outside the image are 0, as in Pillow. */
    public static byte[] crop(byte[] hwc, int width, int height, int channels, int left, int top, int cw, int ch) {
        byte[] out = new byte[cw * ch * channels];
        int x0 = Math.max(0, left);
        int x1 = Math.min(width, left + cw);
        if (x1 <= x0) {
            return out;
        }
        for (int y = 0; y < ch; y++) {
            int sy = y + top;
            if (sy < 0 || sy >= height) {
                continue;
            }
            System.arraycopy(hwc, (sy * width + x0) * channels, out, (y * cw + (x0 - left)) * channels,
                    (x1 - x0) * channels);
        }
        return out;
    }

    /**
     * ARGB pixels to interleaved 8-bit "RGB" (3 bytes a pixel) or "L" (1 byte a pixel).
     * Translucent pixels are composited over white first, as {@code edgevit.preprocess} shows
     * them; luma uses Pillow's ITU-R 601-2 fixed-point weights.
     */
    public static byte[] toColorMode(int[] argb, int width, int height, String colorMode) {
        checkImage(argb, width, height);
        boolean gray = "L".equals(colorMode);
        if (!gray && !"RGB".equals(colorMode)) {
            throw new EdgeVitException("color mode must be RGB or L, got '" + colorMode + "'");
        }
        byte[] out = new byte[argb.length * (gray ? 1 : 3)];
        for (int i = 0; i < argb.length; i++) {
            int p = argb[i];
            int a = p >>> 24;
            int r = (p >> 16) & 0xFF;
            int g = (p >> 8) & 0xFF;
            int b = p & 0xFF;
            if (a != 255) {
                r = overWhite(r, a);
                g = overWhite(g, a);
                b = overWhite(b, a);
            }
            if (gray) {
                out[i] = (byte) ((r * 19595 + g * 38470 + b * 7471 + 0x8000) >> 16);
            } else {
                out[3 * i] = (byte) r;
                out[3 * i + 1] = (byte) g;
                out[3 * i + 2] = (byte) b;
            }
        }
        return out;
    }

    /** One channel of Pillow's {@code alpha_composite(white, rgba)} (7-bit fixed point, rounded /255). */
    static int overWhite(int v, int alpha) {
        if (alpha == 0) {
            return 255;
        }
        final int precision = 7;
        long outa255 = alpha * 255L + 255L * (255 - alpha);
        long coef1 = alpha * 255L * 255L * (1 << precision) / outa255;
        long coef2 = 255L * (1 << precision) - coef1;
        long tmp = v * coef1 + 255L * coef2 + (0x80 << precision);
        return (int) ((((tmp >> 8) + tmp) >> 8) >> precision);
    }

    private float[] normalize(byte[] hwc, int h, int w, int c) {
        float[] out = new float[h * w * c];
        boolean nchw = "NCHW".equals(meta.layout);
        int plane = h * w;
        for (int i = 0; i < plane; i++) {
            for (int ch = 0; ch < c; ch++) {
                // numpy: (uint8 -> float32) / 255.0, then (x - mean32) / std32, each in float32
                float x = (float) (hwc[i * c + ch] & 0xFF) / 255.0f;
                float v = (x - mean[ch]) / std[ch];
                out[nchw ? ch * plane + i : i * c + ch] = v;
            }
        }
        return out;
    }

    private static void checkImage(int[] argb, int width, int height) {
        if (width <= 0 || height <= 0) {
            throw new EdgeVitException("image has zero size (" + width + "x" + height + ")");
        }
        if (argb.length != (long) width * height) {
            throw new EdgeVitException("pixel array holds " + argb.length + " pixels, expected " + width + "x" + height);
        }
    }
}
