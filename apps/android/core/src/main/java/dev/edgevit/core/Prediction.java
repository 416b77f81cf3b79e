package dev.edgevit.core;

import java.util.Locale;
import java.util.Objects;

/** One ranked class: its index, its label and its softmax probability. */
public final class Prediction {
    public final int index;
    public final String label;
    public final float score;

    public Prediction(int index, String label, float score) {
        this.index = index;
        this.label = label;
        this.score = score;
    }

    @Override
    public boolean equals(Object o) {
        if (!(o instanceof Prediction)) {
            return false;
        }
        Prediction p = (Prediction) o;
        return index == p.index && label.equals(p.label) && Float.compare(score, p.score) == 0;
    }

    @Override
    public int hashCode() {
        return Objects.hash(index, label, score);
    }

    @Override
    public String toString() {
        return String.format(Locale.ROOT, "%s (%d) %.4f", label, index, score);
    }
}
