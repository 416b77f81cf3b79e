package dev.edgevit.core;

import static org.junit.Assert.assertArrayEquals;
import static org.junit.Assert.assertEquals;
import static org.junit.Assert.assertThrows;
import static org.junit.Assert.assertTrue;

import java.util.Arrays;
import java.util.List;
import org.junit.Test;

public class ClassificationTest {
    private static final List<String> LABELS = Arrays.asList("cat", "dog", "car");
    private static final List<String> FIVE = Arrays.asList("a", "b", "c", "d", "e");

    @Test
    public void softmaxMatchesNumpy() {
        // numpy: softmax([1, 2, 3]) = [0.09003057, 0.24472847, 0.66524096] (float32)
        assertArrayEquals(new float[] {0.09003057f, 0.24472847f, 0.66524096f},
                Classification.softmax(new float[] {1, 2, 3}), 1e-7f);
        // shifted by the maximum: no overflow for large logits
        float[] big = Classification.softmax(new float[] {1000f, 1000f});
        assertArrayEquals(new float[] {0.5f, 0.5f}, big, 0f);
    }

    @Test
    public void topKRanksAndLabels() {
        List<Prediction> top = Classification.topK(new float[] {0.1f, 3f, 1f}, LABELS, 2);
        assertEquals(2, top.size());
        assertEquals(1, top.get(0).index);
        assertEquals("dog", top.get(0).label);
        assertEquals("car", top.get(1).label);
        assertEquals(1f, top.get(0).score + top.get(1).score + Classification.softmax(new float[] {0.1f, 3f, 1f})[0],
                1e-6f);
    }

    @Test
    public void tiesGoToTheLowerIndexAndKIsCapped() {
        List<Prediction> top = Classification.topK(new float[] {2f, 5f, 5f, 2f, 5f}, FIVE, 10);
        assertEquals(5, top.size());
        int[] order = top.stream().mapToInt(p -> p.index).toArray();
        assertArrayEquals(new int[] {1, 2, 4, 0, 3}, order);
        assertEquals("e", top.get(2).label);
    }

    @Test
    public void labelsThatDoNotMatchTheOutputsAreRefused() {
        EdgeVitException e = assertThrows(EdgeVitException.class,
                () -> Classification.topK(new float[] {2f, 5f, 5f, 2f}, LABELS, 2));
        assertTrue(e.getMessage().contains("4 class scores") && e.getMessage().contains("3 labels"));
        Classification.checkClassScores(new int[] {1, 3}, 3, "m.tflite");
        EdgeVitException load = assertThrows(EdgeVitException.class,
                () -> Classification.checkClassScores(new int[] {1, 10}, 9, "m.tflite"));
        assertTrue(load.getMessage().contains("10 class scores") && load.getMessage().contains("9 labels"));
        assertThrows(EdgeVitException.class, () -> Classification.checkClassScores(new int[] {1, 3, 3}, 3, "m.tflite"));
    }

    @Test
    public void nanLogitsGiveNanScoresInIndexOrder() {
        // numpy: a NaN logit makes every probability NaN; the stable argsort then keeps index order
        List<Prediction> top = Classification.topK(new float[] {1f, Float.NaN, 2f}, LABELS, 3);
        assertArrayEquals(new int[] {0, 1, 2}, top.stream().mapToInt(p -> p.index).toArray());
        assertEquals(Float.NaN, top.get(0).score, 0f);
    }

    @Test(expected = IllegalArgumentException.class)
    public void kMustBePositive() {
        Classification.topK(new float[] {1f}, LABELS, 0);
    }
}
