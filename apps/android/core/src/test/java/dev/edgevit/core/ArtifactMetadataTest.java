package dev.edgevit.core;

import static org.junit.Assert.assertArrayEquals;
import static org.junit.Assert.assertEquals;
import static org.junit.Assert.assertFalse;
import static org.junit.Assert.assertTrue;
import static org.junit.Assert.fail;

import java.util.LinkedHashMap;
import java.util.Map;
import org.junit.Test;

public class ArtifactMetadataTest {
    /** The required fields, as raw JSON text by key; tests add, replace or drop entries. */
    private static Map<String, String> fields() {
        Map<String, String> f = new LinkedHashMap<>();
        f.put("model", "\"m\"");
        f.put("target", "\"tflite\"");
        f.put("precision", "\"fp32\"");
        f.put("input_size", "[224,224]");
        f.put("mean", "[0.5,0.5,0.5]");
        f.put("std", "[0.25,0.25,0.25]");
        f.put("labels", "[\"a\",\"b\"]");
        return f;
    }

    private static String json(Map<String, String> f) {
        StringBuilder sb = new StringBuilder("{");
        for (Map.Entry<String, String> e : f.entrySet()) {
            sb.append(sb.length() > 1 ? "," : "").append('"').append(e.getKey()).append("\":").append(e.getValue());
        }
        return sb.append('}').toString();
    }

    private static final String MINIMAL = json(fields());

    private static String with(String key, String valueJson) {
        Map<String, String> f = fields();
        f.put(key, valueJson);
        return json(f);
    }

    private static String without(String key) {
        Map<String, String> f = fields();
        f.remove(key);
        return json(f);
    }

    private static void expectError(String json, String fragment) {
        try {
            ArtifactMetadata.fromJson(json);
            fail("accepted: " + json);
        } catch (EdgeVitException e) {
            assertTrue("'" + e.getMessage() + "' lacks '" + fragment + "'", e.getMessage().contains(fragment));
        }
    }

    @Test
    public void defaultsMatchPython() {
        ArtifactMetadata m = ArtifactMetadata.fromJson(MINIMAL);
        assertEquals("NCHW", m.layout);
        assertEquals("RGB", m.colorMode);
        assertEquals("float32", m.inputDtype);
        assertEquals("bicubic", m.interpolation);
        assertEquals(0.875, m.cropPct, 0.0);
        assertFalse(m.fusedInput);
        assertEquals(1, m.schemaVersion);
        assertEquals(3, m.channels());
        assertArrayEquals(new int[] {1, 3, 224, 224}, m.inputShape());
        assertEquals("b", m.label(1));
        assertEquals("7", m.label(7));
        assertTrue(m.extra.isEmpty());
    }

    @Test
    public void readsAnExportedArtifactsMetadata() throws Exception {
        ArtifactMetadata m = ArtifactMetadata.fromJson(Fixtures.text("deit_tiny_bicubic_nchw.json"));
        assertEquals("deit_tiny_patch16_224", m.model);
        assertEquals(1000, m.numClasses());
        assertEquals(224, m.inputHeight);
        assertEquals(0.9, m.cropPct, 0.0);
        assertArrayEquals(new double[] {0.485, 0.456, 0.406}, m.mean(), 0.0);
        ArtifactMetadata g = ArtifactMetadata.fromJson(Fixtures.text("fmnist_sample.json"));
        assertEquals("L", g.colorMode);
        assertEquals("bilinear", g.interpolation);
        assertEquals("Ankle boot", g.label(9));
        assertArrayEquals(new int[] {1, 1, 28, 28}, g.inputShape());
    }

    @Test
    public void ignoresUnknownFieldsAndKeepsExtra() {
        Map<String, String> f = fields();
        f.put("future_field", "{\"x\":1}");
        f.put("extra", "{\"k\":[1,2]}");
        f.put("layout", "\"NHWC\"");
        ArtifactMetadata m = ArtifactMetadata.fromJson(json(f));
        assertEquals("NHWC", m.layout);
        assertArrayEquals(new int[] {1, 224, 224, 3}, m.inputShape());
        assertTrue(m.extra.containsKey("k"));
    }

    @Test
    public void refusesNewerSchemaAndMissingFields() {
        expectError(with("schema_version", "2"), "newer than this app understands");
        expectError(without("labels"), "lacks required fields: labels");
        expectError(without("input_size"), "lacks required fields: input_size");
        expectError("[1]", "not a JSON object");
        expectError("{", "not valid JSON");
    }

    @Test
    public void validatesValuesLikePython() {
        expectError(with("layout", "\"CHW\""), "layout must be one of");
        expectError(with("color_mode", "\"RGBA\""), "color_mode must be one of");
        expectError(with("input_dtype", "\"float16\""), "input_dtype must be one of");
        expectError(with("crop_pct", "0"), "crop_pct must be in (0, 1]");
        expectError(with("crop_pct", "1.5"), "crop_pct must be in (0, 1]");
        expectError(with("std", "[1,0,1]"), "std values must be > 0");
        expectError(with("mean", "[0.5]"), "mean/std must have 3 values");
        expectError(with("color_mode", "\"L\""), "mean/std must have 1 values");
        expectError(with("input_size", "[224]"), "input_size must be (height, width) > 0");
        expectError(with("input_size", "[0,224]"), "input_size must be (height, width) > 0");
        expectError(with("input_size", "[22.5,224]"), "must hold integers");
        expectError(with("labels", "\"a,b\""), "'labels' must be a list");
        expectError(with("fused_input", "1"), "'fused_input' must be true or false");
        expectError(with("extra", "[]"), "'extra' must be an object");
        expectError(with("interpolation", "\"box\""), "interpolation must be one of");
    }
}
