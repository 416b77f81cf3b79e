package dev.edgevit.core;

import static org.junit.Assert.assertArrayEquals;
import static org.junit.Assert.assertEquals;
import static org.junit.Assert.assertNull;
import static org.junit.Assert.assertTrue;
import static org.junit.Assert.fail;

import java.io.IOException;
import java.nio.ByteBuffer;
import java.nio.channels.FileChannel;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.Path;
import java.nio.file.StandardOpenOption;
import java.util.ArrayList;
import java.util.Arrays;
import java.util.List;
import java.util.Map;
import java.util.Random;
import org.junit.Test;

/**
 * Metadata read out of real .tflite files (litert-torch output with edgevit metadata embedded
 * as {@code edgevit export} does), compared with what Python's reader found in the same files.
 */
public class TfliteMetadataTest {
    /** Check the Java reader against the JSON description that Python wrote for {@code data}. */
    static void assertMatchesPython(String file, byte[] data, Map<String, Object> expected) throws IOException {
        @SuppressWarnings("unchecked")
        Map<String, Map<String, Object>> want = (Map<String, Map<String, Object>>) (Map<?, ?>) expected.get("entries");
        Map<String, byte[]> got = TfliteMetadata.readEntries(data, file);
        assertEquals(file + ": entry names (in order)", new ArrayList<>(want.keySet()), new ArrayList<>(got.keySet()));
        for (Map.Entry<String, Map<String, Object>> e : want.entrySet()) {
            byte[] bytes = got.get(e.getKey());
            assertEquals(file + ": size of " + e.getKey(), ((Long) e.getValue().get("bytes")).intValue(), bytes.length);
            assertEquals(file + ": sha256 of " + e.getKey(), e.getValue().get("sha256"), Fixtures.sha256(bytes));
        }
        // The same through a file channel (what the app uses for models too large to map).
        Path tmp = Files.createTempFile("edgevit", ".tflite");
        try {
            Files.write(tmp, data);
            try (FileChannel ch = FileChannel.open(tmp, StandardOpenOption.READ)) {
                Map<String, byte[]> viaChannel = TfliteMetadata.readEntries(ch, file);
                assertEquals(got.keySet(), viaChannel.keySet());
                for (String k : got.keySet()) {
                    assertArrayEquals(file + ": channel read of " + k, got.get(k), viaChannel.get(k));
                }
            }
        } finally {
            Files.delete(tmp);
        }
        for (String which : new String[] {"inputs", "outputs"}) {
            @SuppressWarnings("unchecked")
            List<Map<String, Object>> tensors = (List<Map<String, Object>>) expected.get(which);
            if (tensors == null) {
                continue;
            }
            List<TensorInfo> have = "inputs".equals(which) ? TfliteMetadata.inputs(data, file)
                    : TfliteMetadata.outputs(data, file);
            assertEquals(file + ": number of " + which, tensors.size(), have.size());
            for (int i = 0; i < have.size(); i++) {
                Map<String, Object> t = tensors.get(i);
                TensorInfo h = have.get(i);
                String what = file + " " + which + "[" + i + "]";
                assertEquals(what + " name", t.get("name"), h.name);
                assertEquals(what + " dtype", t.get("dtype"), h.dtype);
                @SuppressWarnings("unchecked")
                List<Long> shape = (List<Long>) t.get("shape");
                assertArrayEquals(what + " shape", shape.stream().mapToInt(Long::intValue).toArray(), h.shape());
                assertEquals(what + " scale", ((Number) t.get("scale")).floatValue(), h.scale, 0f);
                assertEquals(what + " zero point", ((Long) t.get("zero_point")).longValue(), h.zeroPoint);
            }
        }
        Object edgevit = expected.get("edgevit");
        if (edgevit != null) {
            assertEquals(edgevit, new String(got.get("edgevit"), StandardCharsets.UTF_8));
            ArtifactMetadata fromPython = ArtifactMetadata.fromJson((String) edgevit);
            ArtifactMetadata fromFile = TfliteMetadata.read(data, file);
            assertEquals(fromPython.toString(), fromFile.toString());
            assertEquals(fromPython.labels, fromFile.labels);
        }
    }

    private static Map<String, Object> fixture(String file) throws IOException {
        for (Map<String, Object> t : Fixtures.list(Fixtures.manifest(), "tflite")) {
            if (file.equals(t.get("file"))) {
                return t;
            }
        }
        throw new AssertionError(file + " is not in golden.json");
    }

    @Test
    public void readsInlineMetadataLikePython() throws Exception {
        assertMatchesPython("tiny_inline.tflite", Fixtures.bytes("tiny_inline.tflite"), fixture("tiny_inline.tflite"));
    }

    @Test
    public void readsMetadataStoredAfterTheFlatbuffer() throws Exception {
        // Buffer.offset/size, as models over 2 GB store their buffers
        assertMatchesPython("tiny_offset.tflite", Fixtures.bytes("tiny_offset.tflite"), fixture("tiny_offset.tflite"));
    }

    @Test
    public void metadataFieldsSurviveTheRoundTrip() throws Exception {
        ArtifactMetadata m = TfliteMetadata.read(Fixtures.bytes("tiny_offset.tflite"), "tiny_offset.tflite");
        assertEquals("tiny_fixture", m.model);
        assertEquals("L", m.colorMode);
        assertEquals(Arrays.asList("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt",
                "Sneaker", "Bag", "Ankle boot"), m.labels);
        assertEquals("caf\u00e9 \u2615 \uD83D\uDC08", m.extra.get("note"));
        assertEquals(Arrays.asList(1L, -0.0025, 1e300), m.extra.get("numbers"));
    }

    @Test
    public void readsFromADirectBufferAtAnOffset() throws Exception {
        byte[] data = Fixtures.bytes("tiny_inline.tflite");
        ByteBuffer direct = ByteBuffer.allocateDirect(data.length + 7);
        direct.position(7);
        direct.put(data);
        direct.position(7);
        assertEquals("tiny_fixture", TfliteMetadata.read(direct, "direct").model);
        assertEquals(7, direct.position()); // the caller's buffer is left as it was
    }

    @Test
    public void readsInputAndOutputTensors() throws Exception {
        List<TensorInfo> in = TfliteMetadata.inputs(Fixtures.bytes("tiny_offset.tflite"), "tiny_offset.tflite");
        assertEquals(1, in.size());
        assertArrayEquals(new int[] {1, 1, 28, 28}, in.get(0).shape());
        assertEquals(0.0078125f, in.get(0).scale, 0f);
        assertEquals(-1, in.get(0).zeroPoint);
        assertTrue(!in.get(0).isQuantized()); // parameters on a float32 tensor do not make it quantised
        TensorInfo out = TfliteMetadata.outputs(Fixtures.bytes("tiny_inline.tflite"), "tiny_inline.tflite").get(0);
        assertEquals("float32", out.dtype);
        assertEquals(10, out.elementCount());
    }

    @Test
    public void modelWithoutEdgevitMetadataIsNamedClearly() throws Exception {
        byte[] data = Fixtures.bytes("tiny_plain.tflite");
        assertNull(TfliteMetadata.readEntries(data, "plain").get("edgevit"));
        try {
            TfliteMetadata.read(data, "plain.tflite");
            fail();
        } catch (EdgeVitException e) {
            assertTrue(e.getMessage(), e.getMessage().startsWith("plain.tflite has no edgevit metadata; export it with"));
        }
    }

    @Test
    public void refusesFilesThatAreNotTflite() {
        expectError(new byte[0], "is empty");
        expectError("not a model at all, just text".getBytes(StandardCharsets.US_ASCII), "not a TFLite model");
        expectError(new byte[8], "not a TFLite model");
    }

    @Test
    public void truncatedMetadataPayloadIsReported() throws Exception {
        byte[] data = Fixtures.bytes("tiny_offset.tflite");
        expectError(Arrays.copyOf(data, data.length - 10), "is truncated (metadata buffer past end of file)");
    }

    @Test
    public void truncationsAndCorruptionNeverEscapeAsOtherExceptions() throws Exception {
        List<byte[]> originals = Arrays.asList(Fixtures.bytes("tiny_inline.tflite"), Fixtures.bytes("tiny_offset.tflite"));
        Random rng = new Random(1234);
        int parsed = 0;
        int refused = 0;
        for (byte[] original : originals) {
            for (int cut = 0; cut < original.length; cut += 7) {
                try {
                    TfliteMetadata.readEntries(Arrays.copyOf(original, cut), "cut");
                    parsed++;
                } catch (EdgeVitException expected) {
                    refused++;
                }
            }
            for (int trial = 0; trial < 3000; trial++) {
                byte[] broken = original.clone();
                for (int flips = 1 + rng.nextInt(4); flips > 0; flips--) {
                    broken[rng.nextInt(broken.length)] = (byte) rng.nextInt(256);
                }
                try {
                    TfliteMetadata.readEntries(broken, "fuzz");
                    TfliteMetadata.inputs(broken, "fuzz");
                    TfliteMetadata.outputs(broken, "fuzz");
                    parsed++;
                } catch (EdgeVitException expected) {
                    refused++;
                }
            }
        }
        assertTrue("no corrupt input was refused", refused > 0);
        assertTrue("every mutation was refused; the test is not exercising valid parses", parsed > 0);
    }

    private static void expectError(byte[] data, String fragment) {
        try {
            TfliteMetadata.readEntries(data, "x.tflite");
            fail("accepted " + data.length + " bytes");
        } catch (EdgeVitException e) {
            assertTrue("'" + e.getMessage() + "' lacks '" + fragment + "'", e.getMessage().contains(fragment));
        }
    }
}
