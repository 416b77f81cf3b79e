package dev.edgevit.core;

import java.util.ArrayList;
import java.util.Arrays;
import java.util.List;

/** Softmax, top-k and label mapping, as {@code edgevit.runtimes.classifier} computes them. */
public final class Classification {
    private Classification() {}

    /** Softmax in double precision (shifted by the maximum), returned as float32 like numpy's. */
    public static float[] softmax(float[] logits) {
        if (logits.length == 0) {
            return new float[0];
        }
        double max = Double.NEGATIVE_INFINITY;
        for (float v : logits) {
            max = Math.max(max, v);
        }
        double[] e = new double[logits.length];
        double sum = 0.0;
        for (int i = 0; i < logits.length; i++) {
            e[i] = Math.exp(logits[i] - max);
            sum += e[i];
        }
        float[] out = new float[logits.length];
        for (int i = 0; i < logits.length; i++) {
            out[i] = (float) (e[i] / sum);
        }
        return out;
    }

    /**
     * The {@code k} most probable classes of one logits vector, best first; ties go to the lower
     * index (numpy's stable argsort of the negated probabilities) and NaN scores rank last.
     * Classes beyond the label list are named by their index.
     */
    public static List<Prediction> topK(float[] logits, List<String> labels, int k) {
        if (k < 1) {
            throw new IllegalArgumentException("k must be >= 1, got " + k);
        }
        float[] probs = softmax(logits);
        Integer[] order = new Integer[probs.length];
        for (int i = 0; i < order.length; i++) {
            order[i] = i;
        }
        // Arrays.sort on objects is a stable merge sort.
        Arrays.sort(order, (a, b) -> {
            float pa = probs[a];
            float pb = probs[b];
            boolean na = Float.isNaN(pa);
            boolean nb = Float.isNaN(pb);
            if (na || nb) {
                return Boolean.compare(na, nb);
            }
            return Float.compare(pb, pa);
        });
        int n = Math.min(k, probs.length);
        List<Prediction> out = new ArrayList<>(n);
        for (int r = 0; r < n; r++) {
            int i = order[r];
            String label = i < labels.size() ? labels.get(i) : Integer.toString(i);
            out.add(new Prediction(i, label, probs[i]));
        }
        return out;
    }

    /** Top-{@code k} with the artifact's labels. */
    public static List<Prediction> topK(float[] logits, ArtifactMetadata meta, int k) {
        return topK(logits, meta.labels, k);
    }
}
