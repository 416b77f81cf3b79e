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
     * The number of labels must equal the number of logits: a model whose outputs and labels
     * differ was exported for other classes, and is refused rather than shown with wrong names.
     */
    public static List<Prediction> topK(float[] logits, List<String> labels, int k) {
        if (k < 1) {
            throw new IllegalArgumentException("k must be >= 1, got " + k);
        }
        if (logits.length != labels.size()) {
            throw new EdgeVitException("the model gives " + logits.length + " class scores but its metadata names "
                    + labels.size() + " labels; re-export it with edgevit (--labels FILE with one name per output)");
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
            out.add(new Prediction(i, labels.get(i), probs[i]));
        }
        return out;
    }

    /**
     * Checks, when a model is loaded, that its output is one vector of class scores with one score
     * per label: shape (1, N) (or (N)) with N the number of labels.
     */
    public static void checkClassScores(int[] outputShape, int numLabels, String name) {
        int n = outputShape.length == 2 && outputShape[0] == 1 ? outputShape[1]
                : outputShape.length == 1 ? outputShape[0] : -1;
        if (n < 0) {
            throw new EdgeVitException(name + " outputs " + Arrays.toString(outputShape)
                    + ", not a vector of class scores (1, N); an edgevit classifier has one logits output");
        }
        if (n != numLabels) {
            throw new EdgeVitException(name + " outputs " + n + " class scores but its metadata names " + numLabels
                    + " labels; re-export it with edgevit (--labels FILE with one name per output)");
        }
    }

    /** Top-{@code k} with the artifact's labels. */
    public static List<Prediction> topK(float[] logits, ArtifactMetadata meta, int k) {
        return topK(logits, meta.labels, k);
    }
}
