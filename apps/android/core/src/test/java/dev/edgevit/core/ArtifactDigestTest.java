package dev.edgevit.core;

import static org.junit.Assert.assertEquals;
import static org.junit.Assert.assertThrows;
import static org.junit.Assert.assertTrue;

import java.nio.charset.StandardCharsets;

import org.junit.Test;

/** The digest rules on hand-built files; ExportedTfliteTest checks a file Python sealed. */
public class ArtifactDigestTest {
    private static final String PLACEHOLDER = "edgevit-sha256:" + "0".repeat(64);

    private static byte[] sealed(String before, String after) {
        byte[] data = (before + PLACEHOLDER + after).getBytes(StandardCharsets.US_ASCII);
        int at = before.length() + "edgevit-sha256:".length();
        byte[] hex = ArtifactDigest.digestAt(data, at).getBytes(StandardCharsets.US_ASCII);
        System.arraycopy(hex, 0, data, at, hex.length);
        return data;
    }

    @Test
    public void sealedFileVerifies() {
        byte[] data = sealed("TFL3 tables and weights ", " more weights");
        assertEquals(64, ArtifactDigest.verify(data, "m.tflite").length());
    }

    @Test
    public void anyFlippedByteIsRefused() {
        byte[] data = sealed("TFL3 tables and weights ", " more weights");
        for (int i = 0; i < data.length; i++) {
            byte[] flipped = data.clone();
            flipped[i] ^= 0x01;
            EdgeVitException e = assertThrows(EdgeVitException.class, () -> ArtifactDigest.verify(flipped, "m.tflite"));
            assertTrue(e.getMessage(), e.getMessage().startsWith("m.tflite"));
        }
    }

    @Test
    public void missingTruncatedAndDoubledDigestsAreRefused() {
        byte[] data = sealed("head ", " tail");
        EdgeVitException none = assertThrows(EdgeVitException.class,
                () -> ArtifactDigest.verify("TFL3 no digest".getBytes(StandardCharsets.US_ASCII), "old.tflite"));
        assertTrue(none.getMessage(), none.getMessage().contains("edgevit export --target tflite"));
        byte[] truncated = java.util.Arrays.copyOf(data, data.length - 20);
        assertThrows(EdgeVitException.class, () -> ArtifactDigest.verify(truncated, "t.tflite"));
        byte[] doubled = (new String(data, StandardCharsets.US_ASCII) + PLACEHOLDER).getBytes(StandardCharsets.US_ASCII);
        EdgeVitException two = assertThrows(EdgeVitException.class, () -> ArtifactDigest.verify(doubled, "d.tflite"));
        assertTrue(two.getMessage(), two.getMessage().contains("more than one"));
    }
}
