package dev.edgevit.core;

import static org.junit.Assert.assertEquals;
import static org.junit.Assert.assertNull;
import static org.junit.Assert.assertTrue;
import static org.junit.Assert.fail;

import java.util.Arrays;
import java.util.List;
import java.util.Map;
import org.junit.Test;

public class JsonTest {
    @Test
    public void parsesAllValueKinds() {
        Map<String, Object> m = Json.parseObject(
                " {\"s\":\"x\",\"i\":-12,\"f\":2.5e-3,\"t\":true,\"n\":null,\"a\":[1,[2],{}],\"o\":{\"k\":false}} ");
        assertEquals("x", m.get("s"));
        assertEquals(-12L, m.get("i"));
        assertEquals(0.0025, (Double) m.get("f"), 0.0);
        assertEquals(Boolean.TRUE, m.get("t"));
        assertTrue(m.containsKey("n"));
        assertNull(m.get("n"));
        List<?> a = (List<?>) m.get("a");
        assertEquals(3, a.size());
        assertEquals(Arrays.asList(2L), a.get(1));
        assertEquals(Boolean.FALSE, ((Map<?, ?>) m.get("o")).get("k"));
        assertEquals(Arrays.asList("s", "i", "f", "t", "n", "a", "o"), Arrays.asList(m.keySet().toArray()));
    }

    @Test
    public void decodesEscapesAndSurrogatePairs() {
        Object s = Json.parse("\"caf\\u00e9 \\u2615 \\ud83d\\udc08 \\\"q\\\" \\\\ \\/ \\n\\t\"");
        assertEquals("caf\u00e9 \u2615 \uD83D\uDC08 \"q\" \\ / \n\t", s);
        assertEquals("\u00fc", Json.parse("\"\u00fc\"")); // raw UTF-8 text is fine too
    }

    @Test
    public void numbers() {
        assertEquals(0L, Json.parse("0"));
        assertEquals(1e300, (Double) Json.parse("1e+300"), 0.0);
        assertEquals(-0.5, (Double) Json.parse("-0.5"), 0.0);
        assertEquals(1.0E20, (Double) Json.parse("100000000000000000000"), 0.0); // beyond long
        assertTrue(Double.isNaN((Double) Json.parse("NaN"))); // Python's json.dumps writes these
        assertEquals(Double.NEGATIVE_INFINITY, (Double) Json.parse("-Infinity"), 0.0);
    }

    @Test
    public void rejectsMalformedDocuments() {
        String[] bad = {"", "{", "[1,]", "{\"a\":1,}", "01", "1.", "1e", "-", "\"abc", "\"a\u0001\"", "{a:1}",
            "[1] x", "tru", "\"\\x\"", "\"\\u12\"", "{\"a\" 1}", "[1 2]", "+1", ".5"};
        for (String text : bad) {
            try {
                Json.parse(text);
                fail("accepted malformed JSON: " + text);
            } catch (EdgeVitException expected) {
                assertTrue(expected.getMessage(), expected.getMessage().startsWith("invalid JSON"));
            }
        }
    }

    @Test
    public void limitsNesting() {
        StringBuilder deep = new StringBuilder();
        for (int i = 0; i < 1000; i++) {
            deep.append('[');
        }
        try {
            Json.parse(deep.toString());
            fail("accepted 1000 nested arrays");
        } catch (EdgeVitException expected) {
            assertTrue(expected.getMessage().contains("nested deeper"));
        }
    }

    @Test
    public void parseObjectRefusesOtherTypes() {
        try {
            Json.parseObject("[1]");
            fail();
        } catch (EdgeVitException expected) {
            assertEquals("expected a JSON object, got array", expected.getMessage());
        }
    }
}
