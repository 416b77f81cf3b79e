package dev.edgevit.core;

import static org.junit.Assert.assertArrayEquals;
import static org.junit.Assert.assertEquals;
import static org.junit.Assert.assertTrue;

import java.util.List;
import java.util.Locale;
import java.util.Map;
import org.junit.Test;

/**
 * The Java preprocessing of real images equals the Python runtime's ({@code edgevit.preprocess}),
 * value for value, for every case tools/make_golden.py wrote: bicubic/bilinear/lanczos/nearest,
 * NCHW/NHWC, RGB/L, downscaling and upscaling, a crop larger than the resized image, alpha over
 * white, and a fused-input uint8 frame.
 *
 * <p>Tolerance: every float element within {@value #TOLERANCE} of Python's (float32 rounding
 * noise only; one 8-bit level is 1/255/std >= 0.017 here, so a single resampled pixel that
 * differs by one level fails the test), and uint8 tensors equal exactly.
 */
public class GoldenPreprocessTest {
    static final double TOLERANCE = 1e-6;

    @Test
    public void javaPreprocessingMatchesPythonOnRealImages() throws Exception {
        List<Map<String, Object>> cases = Fixtures.list(Fixtures.manifest(), "cases");
        assertTrue("golden.json lists no cases", cases.size() >= 8);
        double worst = 0;
        for (Map<String, Object> c : cases) {
            String name = (String) c.get("name");
            ArtifactMetadata meta = ArtifactMetadata.fromJson(Fixtures.text((String) c.get("metadata")));
            Fixtures.Argb img = Fixtures.image((String) c.get("image"));
            InputTensor got = new Preprocessor(meta).apply(img.pixels, img.width, img.height);

            @SuppressWarnings("unchecked")
            List<Object> shapeList = (List<Object>) c.get("shape");
            int[] shape = shapeList.stream().mapToInt(v -> ((Long) v).intValue()).toArray();
            assertArrayEquals(name + ": shape", shape, got.shape());
            assertEquals(name + ": dtype", c.get("dtype"), got.dtype());

            byte[] raw = Fixtures.bytes((String) c.get("tensor"));
            if (!got.isFloat()) {
                assertArrayEquals(name + ": uint8 tensor", raw, got.bytes());
                System.out.printf(Locale.ROOT, "golden %-24s %-14s uint8 equal (%d values)%n", name,
                        img.width + "x" + img.height, raw.length);
                continue;
            }
            float[] want = Fixtures.littleEndianFloats(raw);
            float[] have = got.floats();
            assertEquals(name + ": element count", want.length, have.length);
            double maxDiff = 0;
            int differing = 0;
            int first = -1;
            for (int i = 0; i < want.length; i++) {
                double d = Math.abs((double) want[i] - have[i]);
                if (d > 0) {
                    differing++;
                    if (first < 0) {
                        first = i;
                    }
                }
                maxDiff = Math.max(maxDiff, d);
            }
            worst = Math.max(worst, maxDiff);
            System.out.printf(Locale.ROOT, "golden %-24s %-14s max|diff| %.3e, %d of %d values differ%n", name,
                    img.width + "x" + img.height + " " + meta.interpolation, maxDiff, differing, want.length);
            assertTrue(String.format(Locale.ROOT, "%s: max |java - python| = %.6g > %.1g (first at %d: %s vs %s)",
                    name, maxDiff, TOLERANCE, first, first < 0 ? "" : have[first], first < 0 ? "" : want[first]),
                    maxDiff <= TOLERANCE);
        }
        System.out.printf(Locale.ROOT, "golden: worst max|diff| over all cases %.3e (tolerance %.1g)%n", worst,
                TOLERANCE);
    }
}
