package dev.edgevit.core;

import java.nio.charset.StandardCharsets;
import java.util.ArrayList;
import java.util.Arrays;
import java.util.Collections;
import java.util.List;
import java.util.Map;

/**
 * What an app needs to feed an edgevit artifact and name its outputs: the JSON that {@code
 * edgevit.metadata.ArtifactMetadata.to_json()} writes into the artifact under the key {@value
 * #METADATA_KEY}. Parsing and validation follow the Python class: unknown keys are ignored
 * (newer writers may add fields), a newer schema version is refused.
 */
public final class ArtifactMetadata {
    /** Name of the metadata entry inside an artifact. */
    public static final String METADATA_KEY = "edgevit";
    /** The newest schema version this reader understands. */
    public static final int SCHEMA_VERSION = 1;

    private static final int MAX_METADATA_CHARS = 4 * 1024 * 1024;
    private static final List<String> LAYOUTS = Arrays.asList("NCHW", "NHWC");
    private static final List<String> COLOR_MODES = Arrays.asList("RGB", "L");
    private static final List<String> INPUT_DTYPES = Arrays.asList("float32", "uint8", "int8");

    public final String model;
    public final String target;
    public final String precision;
    /** Model input (height, width). */
    public final int inputHeight;
    public final int inputWidth;
    private final double[] mean;
    private final double[] std;
    public final List<String> labels;
    public final String layout;
    public final String colorMode;
    public final String inputDtype;
    public final String interpolation;
    public final double cropPct;
    public final boolean fusedInput;
    public final String family;
    public final String attention;
    public final String source;
    public final String weights;
    public final String edgevitVersion;
    public final String created;
    public final List<String> fallbacks;
    public final Map<String, Object> extra;
    public final int schemaVersion;

    private ArtifactMetadata(Map<String, Object> d) {
        model = requiredString(d, "model");
        target = requiredString(d, "target");
        precision = requiredString(d, "precision");
        int[] size = intList(d.get("input_size"), "input_size");
        if (size.length != 2 || Math.min(size[0], size[1]) <= 0) {
            throw new EdgeVitException(
                    "metadata input_size must be (height, width) > 0, got " + Arrays.toString(size));
        }
        inputHeight = size[0];
        inputWidth = size[1];
        mean = doubleList(d.get("mean"), "mean");
        std = doubleList(d.get("std"), "std");
        labels = stringList(d.get("labels"), "labels");
        layout = optionalString(d, "layout", "NCHW");
        colorMode = optionalString(d, "color_mode", "RGB");
        inputDtype = optionalString(d, "input_dtype", "float32");
        interpolation = optionalString(d, "interpolation", "bicubic");
        cropPct = d.containsKey("crop_pct") ? number(d.get("crop_pct"), "crop_pct") : 0.875;
        fusedInput = optionalBoolean(d, "fused_input", false);
        family = optionalString(d, "family", "");
        attention = optionalString(d, "attention", "");
        source = optionalString(d, "source", "");
        weights = optionalString(d, "weights", "");
        edgevitVersion = optionalString(d, "edgevit_version", "");
        created = optionalString(d, "created", "");
        fallbacks = d.containsKey("fallbacks") ? stringList(d.get("fallbacks"), "fallbacks")
                : Collections.<String>emptyList();
        Object ex = d.get("extra");
        if (ex != null && !(ex instanceof Map)) {
            throw new EdgeVitException("edgevit metadata field 'extra' must be an object");
        }
        @SuppressWarnings("unchecked")
        Map<String, Object> exMap = ex == null ? Collections.<String, Object>emptyMap() : (Map<String, Object>) ex;
        extra = exMap;
        schemaVersion = readSchemaVersion(d);
        validate();
    }

    private void validate() {
        if (!LAYOUTS.contains(layout)) {
            throw new EdgeVitException("metadata layout must be one of " + LAYOUTS + ", got '" + layout + "'");
        }
        if (!COLOR_MODES.contains(colorMode)) {
            throw new EdgeVitException(
                    "metadata color_mode must be one of " + COLOR_MODES + ", got '" + colorMode + "'");
        }
        if (!INPUT_DTYPES.contains(inputDtype)) {
            throw new EdgeVitException(
                    "metadata input_dtype must be one of " + INPUT_DTYPES + ", got '" + inputDtype + "'");
        }
        int c = channels();
        if (mean.length != c || std.length != c) {
            throw new EdgeVitException(
                    "metadata mean/std must have " + c + " values for color mode " + colorMode);
        }
        for (double s : std) {
            if (!(s > 0)) {
                throw new EdgeVitException("metadata std values must be > 0");
            }
        }
        if (!(cropPct > 0 && cropPct <= 1)) {
            throw new EdgeVitException("metadata crop_pct must be in (0, 1], got " + cropPct);
        }
        // Python falls back to bicubic for a name it does not know; a reader that silently
        // resamples differently would break parity, so an unknown name is refused here.
        Resampler.Filter.fromName(interpolation);
    }

    /** Parse the metadata JSON text. */
    public static ArtifactMetadata fromJson(String json) {
        if (json.length() > MAX_METADATA_CHARS) {
            throw new EdgeVitException("edgevit metadata is implausibly large (> 4 MiB)");
        }
        Object parsed;
        try {
            parsed = Json.parse(json);
        } catch (EdgeVitException e) {
            throw new EdgeVitException("edgevit metadata is not valid JSON: " + e.getMessage(), e);
        }
        if (!(parsed instanceof Map)) {
            throw new EdgeVitException("edgevit metadata is not a JSON object");
        }
        @SuppressWarnings("unchecked")
        Map<String, Object> map = (Map<String, Object>) parsed;
        return fromMap(map);
    }

    /** Parse the metadata from its UTF-8 bytes (as stored in the artifact). */
    public static ArtifactMetadata fromJson(byte[] utf8) {
        return fromJson(new String(utf8, StandardCharsets.UTF_8));
    }

    /** Build from an already parsed JSON object. */
    public static ArtifactMetadata fromMap(Map<String, Object> data) {
        List<String> missing = new ArrayList<>();
        for (String key : new String[] {"model", "target", "precision", "input_size", "mean", "std", "labels"}) {
            if (!data.containsKey(key)) {
                missing.add(key);
            }
        }
        readSchemaVersion(data); // a newer schema is reported before anything else
        if (!missing.isEmpty()) {
            throw new EdgeVitException("edgevit metadata lacks required fields: " + String.join(", ", missing));
        }
        return new ArtifactMetadata(data);
    }

    private static int readSchemaVersion(Map<String, Object> d) {
        Object v = d.containsKey("schema_version") ? d.get("schema_version") : (long) SCHEMA_VERSION;
        if (!(v instanceof Long) || (Long) v > SCHEMA_VERSION) {
            throw new EdgeVitException("artifact metadata schema " + v + " is newer than this app understands ("
                    + SCHEMA_VERSION + "); update the app");
        }
        return (int) (long) (Long) v;
    }

    public int channels() {
        return "L".equals(colorMode) ? 1 : 3;
    }

    public int numClasses() {
        return labels.size();
    }

    public double[] mean() {
        return mean.clone();
    }

    public double[] std() {
        return std.clone();
    }

    /** The label of class {@code index}, or the index as text when the artifact has fewer labels. */
    public String label(int index) {
        return index >= 0 && index < labels.size() ? labels.get(index) : Integer.toString(index);
    }

    /** The input tensor shape for one image: NCHW or NHWC as the artifact declares. */
    public int[] inputShape() {
        if ("NHWC".equals(layout)) {
            return new int[] {1, inputHeight, inputWidth, channels()};
        }
        return new int[] {1, channels(), inputHeight, inputWidth};
    }

    @Override
    public String toString() {
        return "ArtifactMetadata{model=" + model + ", target=" + target + ", precision=" + precision
                + ", input=" + inputHeight + "x" + inputWidth + " " + colorMode + " " + layout + " " + inputDtype
                + ", interpolation=" + interpolation + ", crop_pct=" + cropPct + ", fused_input=" + fusedInput
                + ", classes=" + labels.size() + "}";
    }

    // ---- typed field readers -------------------------------------------------------------

    private static String requiredString(Map<String, Object> d, String key) {
        Object v = d.get(key);
        if (!(v instanceof String)) {
            throw new EdgeVitException("edgevit metadata field '" + key + "' must be a string, got " + Json.typeName(v));
        }
        return (String) v;
    }

    private static String optionalString(Map<String, Object> d, String key, String dflt) {
        return d.containsKey(key) ? requiredString(d, key) : dflt;
    }

    private static boolean optionalBoolean(Map<String, Object> d, String key, boolean dflt) {
        if (!d.containsKey(key)) {
            return dflt;
        }
        Object v = d.get(key);
        if (!(v instanceof Boolean)) {
            throw new EdgeVitException("edgevit metadata field '" + key + "' must be true or false");
        }
        return (Boolean) v;
    }

    private static List<?> list(Object v, String key) {
        if (!(v instanceof List)) {
            throw new EdgeVitException("edgevit metadata field '" + key + "' must be a list");
        }
        return (List<?>) v;
    }

    private static double number(Object v, String key) {
        if (!(v instanceof Number)) {
            throw new EdgeVitException("edgevit metadata is malformed: '" + key + "' holds a " + Json.typeName(v)
                    + " where a number belongs");
        }
        return ((Number) v).doubleValue();
    }

    private static int[] intList(Object v, String key) {
        List<?> items = list(v, key);
        int[] out = new int[items.size()];
        for (int i = 0; i < out.length; i++) {
            Object item = items.get(i);
            if (!(item instanceof Long) || (Long) item > Integer.MAX_VALUE || (Long) item < Integer.MIN_VALUE) {
                throw new EdgeVitException("edgevit metadata is malformed: '" + key + "' must hold integers");
            }
            out[i] = (int) (long) (Long) item;
        }
        return out;
    }

    private static double[] doubleList(Object v, String key) {
        List<?> items = list(v, key);
        double[] out = new double[items.size()];
        for (int i = 0; i < out.length; i++) {
            out[i] = number(items.get(i), key);
        }
        return out;
    }

    private static List<String> stringList(Object v, String key) {
        List<?> items = list(v, key);
        List<String> out = new ArrayList<>(items.size());
        for (Object item : items) {
            if (item instanceof String) {
                out.add((String) item);
            } else if (item instanceof Long) {
                out.add(item.toString()); // Python's str() of an integer label
            } else {
                throw new EdgeVitException("edgevit metadata is malformed: '" + key + "' must hold strings");
            }
        }
        return Collections.unmodifiableList(out);
    }
}
