package dev.edgevit.core;

import static org.junit.Assert.assertEquals;
import static org.junit.Assume.assumeTrue;

import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.Path;
import java.nio.file.Paths;
import java.util.Map;
import org.junit.Test;

/**
 * Reads the metadata of a model that {@code edgevit export} wrote (too large to commit): the
 * pytest wrapper exports vit_fmnist_tiny and passes EDGEVIT_TEST_TFLITE (the .tflite) and
 * EDGEVIT_TEST_TFLITE_EXPECTED (what Python's reader found in it). Skipped when they are unset.
 */
public class ExportedTfliteTest {
    @Test
    public void readsTheMetadataOfAnEdgevitExport() throws Exception {
        String model = System.getenv("EDGEVIT_TEST_TFLITE");
        String expected = System.getenv("EDGEVIT_TEST_TFLITE_EXPECTED");
        assumeTrue("EDGEVIT_TEST_TFLITE not set (tests/apps/test_android_jvm.py sets it)", model != null && expected != null);
        Path path = Paths.get(model);
        byte[] data = Files.readAllBytes(path);
        Map<String, Object> want = Json.parseObject(new String(Files.readAllBytes(Paths.get(expected)),
                StandardCharsets.UTF_8));
        TfliteMetadataTest.assertMatchesPython(path.getFileName().toString(), data, want);
        ArtifactMetadata m = TfliteMetadata.read(data, path.getFileName().toString());
        // The digest Python sealed verifies here, and a flipped weight byte does not.
        ArtifactDigest.verify(data, path.getFileName().toString());
        data[data.length / 2] ^= 0x01;
        try {
            ArtifactDigest.verify(data, "flipped");
            throw new AssertionError("a flipped byte passed the digest check");
        } catch (EdgeVitException refused) {
            data[data.length / 2] ^= 0x01;
        }
        System.out.printf("exported %s: %d bytes, %s%n", path.getFileName(), data.length, m);
        assertEquals(ArtifactMetadata.fromJson((String) want.get("edgevit")).toString(), m.toString());
    }
}
