package dev.edgevit.core;

import static org.junit.Assert.assertArrayEquals;
import static org.junit.Assert.assertEquals;
import static org.junit.Assert.assertNotSame;
import static org.junit.Assert.assertTrue;

import java.util.Arrays;
import org.junit.Test;

public class ResamplerTest {
    @Test
    public void sameSizeIsACopy() {
        byte[] src = {1, 2, 3, 4, 5, 6};
        byte[] out = Resampler.resize(src, 2, 1, 3, 2, 1, Resampler.Filter.BICUBIC);
        assertArrayEquals(src, out);
        assertNotSame(src, out);
    }

    @Test
    public void constantImagesStayConstant() {
        // The fixed-point weights of each output pixel sum to 1 within rounding: no drift.
        byte[] src = new byte[37 * 23 * 3];
        Arrays.fill(src, (byte) 200);
        for (Resampler.Filter f : Resampler.Filter.values()) {
            for (int[] size : new int[][] {{11, 7}, {80, 50}, {37, 5}, {3, 23}}) {
                byte[] out = Resampler.resize(src, 37, 23, 3, size[0], size[1], f);
                for (byte b : out) {
                    assertEquals(f + " " + Arrays.toString(size), 200, b & 0xFF);
                }
            }
        }
    }

    @Test
    public void downscalingWidensTheSupport() {
        // 100 -> 10 with bilinear: each output averages ~20 source pixels (support 1 x scale 10).
        Resampler.Coefficients c = Resampler.coefficients(100, 10, Resampler.Filter.BILINEAR);
        assertEquals(2 * 10 + 1, c.ksize);
        assertEquals(0, c.start[0]);
        assertEquals(15, c.count[0]); // window clipped at the left edge: centre 5, support 10
        assertEquals(20, c.count[5]);
        // upscaling keeps the filter's own support
        Resampler.Coefficients up = Resampler.coefficients(10, 40, Resampler.Filter.BICUBIC);
        assertEquals(2 * 2 + 1, up.ksize);
        int sum = 0;
        for (int i = 0; i < up.count[20]; i++) {
            sum += up.weights[20 * up.ksize + i];
        }
        assertEquals(1 << 22, sum, 4);
    }

    @Test
    public void hardEdgeUpscaleMatchesPillow() {
        // Pillow 13: Image.fromarray(np.array([[0, 0, 255, 255]], np.uint8)).resize((16, 1), filter)
        // bicubic and lanczos overshoot (clipped to 0..255); lanczos rings at the renormalised edges.
        byte[] src = {0, 0, (byte) 255, (byte) 255};
        int[][] pillow = {
            {0, 0, 0, 0, 0, 0, 0, 0, 255, 255, 255, 255, 255, 255, 255, 255},
            {0, 0, 0, 0, 0, 0, 32, 96, 159, 223, 255, 255, 255, 255, 255, 255},
            {0, 0, 0, 0, 0, 0, 21, 88, 167, 234, 255, 255, 255, 255, 255, 255},
            {12, 6, 0, 0, 0, 0, 23, 89, 166, 232, 255, 255, 255, 255, 249, 243},
        };
        Resampler.Filter[] filters = {
            Resampler.Filter.NEAREST, Resampler.Filter.BILINEAR, Resampler.Filter.BICUBIC, Resampler.Filter.LANCZOS};
        for (int f = 0; f < filters.length; f++) {
            byte[] out = Resampler.resize(src, 4, 1, 1, 16, 1, filters[f]);
            int[] got = new int[16];
            for (int i = 0; i < 16; i++) {
                got[i] = out[i] & 0xFF;
            }
            assertArrayEquals(filters[f].toString(), pillow[f], got);
        }
    }

    @Test
    public void nearestSamplesPixelCentres() {
        byte[] src = new byte[8];
        for (int i = 0; i < 8; i++) {
            src[i] = (byte) i;
        }
        // 8 -> 4: centres at 1, 3, 5, 7; 8 -> 3: at 1.33, 4, 6.67
        assertArrayEquals(new byte[] {1, 3, 5, 7}, Resampler.resize(src, 8, 1, 1, 4, 1, Resampler.Filter.NEAREST));
        assertArrayEquals(new byte[] {1, 4, 6}, Resampler.resize(src, 8, 1, 1, 3, 1, Resampler.Filter.NEAREST));
        assertArrayEquals(new byte[] {0, 0, 1, 1}, Resampler.resize(new byte[] {0, 1}, 2, 1, 1, 4, 1,
                Resampler.Filter.NEAREST));
    }

    @Test
    public void channelsAreResampledIndependently() {
        int w = 9;
        int h = 6;
        byte[] rgb = new byte[w * h * 3];
        byte[] red = new byte[w * h];
        for (int i = 0; i < w * h; i++) {
            red[i] = (byte) (i * 37);
            rgb[3 * i] = red[i];
            rgb[3 * i + 1] = (byte) 17;
            rgb[3 * i + 2] = (byte) (255 - i);
        }
        for (Resampler.Filter f : Resampler.Filter.values()) {
            byte[] out = Resampler.resize(rgb, w, h, 3, 5, 4, f);
            byte[] outRed = Resampler.resize(red, w, h, 1, 5, 4, f);
            for (int i = 0; i < 20; i++) {
                assertEquals(f.toString(), outRed[i], out[3 * i]);
                assertEquals(f.toString(), 17, out[3 * i + 1]);
            }
        }
    }

    @Test(expected = IllegalArgumentException.class)
    public void refusesAWrongBufferSize() {
        Resampler.resize(new byte[5], 2, 1, 3, 4, 2, Resampler.Filter.BILINEAR);
    }
}
