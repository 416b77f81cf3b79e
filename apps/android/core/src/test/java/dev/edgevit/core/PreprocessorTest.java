package dev.edgevit.core;

import static org.junit.Assert.assertArrayEquals;
import static org.junit.Assert.assertEquals;
import static org.junit.Assert.assertTrue;
import static org.junit.Assert.fail;

import java.nio.ByteBuffer;
import java.nio.ByteOrder;
import org.junit.Test;

public class PreprocessorTest {
    private static ArtifactMetadata meta(String extra) {
        return ArtifactMetadata.fromJson("{\"model\":\"m\",\"target\":\"tflite\",\"precision\":\"fp32\","
                + "\"mean\":[0.5,0.25,0.0],\"std\":[0.5,0.5,1.0],\"labels\":[\"a\"]" + extra + "}");
    }

    @Test
    public void resizedSizeFollowsPython() {
        // python: scale = floor(224 / 0.9) = 248; 451x300 -> (int(248 * 451 / 300), 248)
        ArtifactMetadata m = meta(",\"input_size\":[224,224],\"crop_pct\":0.9");
        assertArrayEquals(new int[] {372, 248}, Preprocessor.resizedSize(451, 300, m));
        assertArrayEquals(new int[] {248, 372}, Preprocessor.resizedSize(300, 451, m));
        assertArrayEquals(new int[] {248, 248}, Preprocessor.resizedSize(640, 640, m));
        // the shorter side becomes the scale size, the other keeps the aspect ratio (truncated)
        ArtifactMetadata tiny = meta(",\"input_size\":[1,1],\"crop_pct\":1.0");
        assertArrayEquals(new int[] {1, 600}, Preprocessor.resizedSize(5, 3000, tiny));
        assertArrayEquals(new int[] {600, 1}, Preprocessor.resizedSize(3000, 5, tiny));
    }

    @Test
    public void cropOutsideTheImageIsZero() {
        byte[] img = {1, 2, 3, 4}; // 2x2, one channel
        assertArrayEquals(new byte[] {0, 0, 0, 0, 1, 2, 0, 3, 4}, Preprocessor.crop(img, 2, 2, 1, -1, -1, 3, 3));
        assertArrayEquals(new byte[] {4, 0, 0, 0}, Preprocessor.crop(img, 2, 2, 1, 1, 1, 2, 2));
        assertArrayEquals(new byte[4], Preprocessor.crop(img, 2, 2, 1, 5, 0, 2, 2));
    }

    @Test
    public void compositesAlphaOverWhiteAsPillowDoes() {
        for (int v = 0; v < 256; v++) {
            assertEquals("opaque pixels are unchanged", v, Preprocessor.overWhite(v, 255));
            assertEquals("transparent pixels are white", 255, Preprocessor.overWhite(v, 0));
        }
        // half transparent black over white is mid gray: Pillow gives 127 for alpha 128
        assertEquals(127, Preprocessor.overWhite(0, 128));
        byte[] rgb = Preprocessor.toColorMode(new int[] {0x80000000, 0x00123456, 0xFF102030}, 3, 1, "RGB");
        assertArrayEquals(new byte[] {127, 127, 127, (byte) 255, (byte) 255, (byte) 255, 0x10, 0x20, 0x30}, rgb);
    }

    @Test
    public void grayUsesPillowsLumaWeights() {
        // L = (R*19595 + G*38470 + B*7471 + 0x8000) >> 16
        byte[] l = Preprocessor.toColorMode(new int[] {0xFFFF0000, 0xFF00FF00, 0xFF0000FF, 0xFF808080}, 4, 1, "L");
        assertArrayEquals(new byte[] {76, (byte) 150, 29, (byte) 128}, l);
    }

    @Test
    public void normalisesAndLaysOut() {
        // a 1x2 image, no resize (crop_pct 1, size 1x2 == image): check NCHW and NHWC order and values
        int[] px = {0xFF0080FF, 0xFFFF0000};
        ArtifactMetadata nchw = meta(",\"input_size\":[1,2],\"crop_pct\":1.0,\"interpolation\":\"bilinear\"");
        float[] a = new Preprocessor(nchw).apply(px, 2, 1).floats();
        float r0 = (0f / 255f - 0.5f) / 0.5f;
        float r1 = (255f / 255f - 0.5f) / 0.5f;
        float g0 = (128f / 255f - 0.25f) / 0.5f;
        float g1 = (0f - 0.25f) / 0.5f;
        float b0 = 1f;
        float b1 = 0f;
        assertArrayEquals(new float[] {r0, r1, g0, g1, b0, b1}, a, 0f);
        ArtifactMetadata nhwc = meta(",\"input_size\":[1,2],\"crop_pct\":1.0,\"layout\":\"NHWC\"");
        InputTensor t = new Preprocessor(nhwc).apply(px, 2, 1);
        assertArrayEquals(new int[] {1, 1, 2, 3}, t.shape());
        assertArrayEquals(new float[] {r0, g0, b0, r1, g1, b1}, t.floats(), 0f);

        ByteBuffer buf = ByteBuffer.allocateDirect(t.byteSize());
        t.writeTo(buf);
        assertEquals(t.byteSize(), buf.position());
        buf.order(ByteOrder.nativeOrder());
        assertEquals(g0, buf.getFloat(4), 0f);
    }

    @Test
    public void fusedInputGivesTheUint8Frame() {
        ArtifactMetadata fused = meta(",\"input_size\":[1,2],\"crop_pct\":1.0,\"fused_input\":true,"
                + "\"layout\":\"NHWC\",\"input_dtype\":\"uint8\"");
        InputTensor t = new Preprocessor(fused).apply(new int[] {0xFF0080FF, 0xFFFF0000}, 2, 1);
        assertEquals("uint8", t.dtype());
        assertArrayEquals(new int[] {1, 1, 2, 3}, t.shape());
        assertArrayEquals(new byte[] {0, (byte) 128, (byte) 255, (byte) 255, 0, 0}, t.bytes());
        try {
            t.floats();
            fail();
        } catch (IllegalStateException expected) {
            assertTrue(expected.getMessage().contains("use bytes()"));
        }
    }

    @Test
    public void refusesMismatchedPixelArrays() {
        Preprocessor p = new Preprocessor(meta(",\"input_size\":[4,4]"));
        try {
            p.apply(new int[10], 4, 4);
            fail();
        } catch (EdgeVitException e) {
            assertEquals("pixel array holds 10 pixels, expected 4x4", e.getMessage());
        }
        try {
            p.apply(new int[0], 0, 4);
            fail();
        } catch (EdgeVitException e) {
            assertTrue(e.getMessage().contains("zero size"));
        }
    }
}
