package dev.edgevit.core;

/**
 * Affine (de)quantisation of int8/uint8 model inputs and outputs with a tensor's own scale and
 * zero point, as {@code edgevit.runtimes.tflite} does: {@code q = clip(rint(x / scale + zero))},
 * {@code x = (q - zero) * scale}, in float32.
 */
public final class Quantization {
    private Quantization() {}

    /** Quantise to signed int8 ({@code qmin=-128, qmax=127}) or uint8 ({@code 0, 255}, stored in bytes). */
    public static byte[] quantize(float[] values, float scale, int zeroPoint, int qmin, int qmax) {
        if (!(scale > 0)) {
            throw new IllegalArgumentException("quantization scale must be > 0, got " + scale);
        }
        byte[] out = new byte[values.length];
        float zero = zeroPoint;
        for (int i = 0; i < values.length; i++) {
            double q = Math.rint(values[i] / scale + zero);
            q = q < qmin ? qmin : (q > qmax ? qmax : q);
            out[i] = (byte) (int) q;
        }
        return out;
    }

    /** Dequantise int8 ({@code signed=true}) or uint8 values. */
    public static float[] dequantize(byte[] values, boolean signed, float scale, int zeroPoint) {
        float[] out = new float[values.length];
        for (int i = 0; i < values.length; i++) {
            int q = signed ? values[i] : values[i] & 0xFF;
            out[i] = ((float) q - zeroPoint) * scale;
        }
        return out;
    }
}
