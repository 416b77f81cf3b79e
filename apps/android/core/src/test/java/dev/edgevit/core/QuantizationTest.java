package dev.edgevit.core;

import static org.junit.Assert.assertArrayEquals;

import org.junit.Test;

public class QuantizationTest {
    @Test
    public void quantizeRoundsHalfToEvenAndClips() {
        // numpy: rint(x / 0.5 + 3) clipped to int8
        byte[] q = Quantization.quantize(new float[] {0.25f, 0.75f, -1.75f, 100f, -100f}, 0.5f, 3, -128, 127);
        assertArrayEquals(new byte[] {4, 4, 0, 127, -128}, q); // 3.5 -> 4, 4.5 -> 4, -0.5 -> -0
    }

    @Test
    public void uint8RangeIsStoredInBytes() {
        byte[] q = Quantization.quantize(new float[] {0f, 1f, 2f}, 1f / 127.5f, 128, 0, 255);
        assertArrayEquals(new byte[] {(byte) 128, (byte) 255, (byte) 255}, q);
    }

    @Test
    public void dequantizeSignedAndUnsigned() {
        assertArrayEquals(new float[] {-1.5f, 0f, -0.5f},
                Quantization.dequantize(new byte[] {-3, 0, (byte) 0xFF}, true, 0.5f, 0), 0f);
        assertArrayEquals(new float[] {125f, -1.5f, 126f},
                Quantization.dequantize(new byte[] {-3, 0, (byte) 0xFF}, false, 0.5f, 3), 0f);
    }
}
