package dev.tally.udf;

import java.util.Arrays;

/**
 * Sparse store: ascending keys and their weights in parallel arrays. A key is never
 * present with weight 0 (as in Python's dicts), so the arrays are canonical. Adds of an
 * existing key are a binary search; stores hold at most maxBuckets (2048) keys.
 */
final class SketchStore {
    long[] keys = new long[4];
    double[] weights = new double[4];
    int size;

    void add(long key, double weight) {
        int i = size > 0 && keys[size - 1] == key ? size - 1 : Arrays.binarySearch(keys, 0, size, key);
        if (i >= 0) {
            weights[i] += weight; // Python: store.get(key, 0.0) + count
            return;
        }
        i = -i - 1;
        ensureCapacity(size + 1);
        System.arraycopy(keys, i, keys, i + 1, size - i);
        System.arraycopy(weights, i, weights, i + 1, size - i);
        keys[i] = key;
        weights[i] = weight;
        size++;
    }

    /** Appends a key larger than every key present (decoding). */
    void append(long key, double weight) {
        ensureCapacity(size + 1);
        keys[size] = key;
        weights[size++] = weight;
    }

    void mergeFrom(SketchStore other) {
        if (other.size <= 8) {
            for (int j = 0; j < other.size; j++) {
                add(other.keys[j], other.weights[j]);
            }
            return;
        }
        int n = size + other.size;
        long[] k = new long[n];
        double[] w = new double[n];
        int i = 0;
        int j = 0;
        int m = 0;
        while (i < size && j < other.size) {
            if (keys[i] < other.keys[j]) {
                k[m] = keys[i];
                w[m++] = weights[i++];
            } else if (keys[i] > other.keys[j]) {
                k[m] = other.keys[j];
                w[m++] = other.weights[j++];
            } else {
                k[m] = keys[i];
                w[m++] = weights[i++] + other.weights[j++];
            }
        }
        while (i < size) {
            k[m] = keys[i];
            w[m++] = weights[i++];
        }
        while (j < other.size) {
            k[m] = other.keys[j];
            w[m++] = other.weights[j++];
        }
        keys = k;
        weights = w;
        size = m;
    }

    /** Folds the lowest keys into the lowest kept key, in ascending order as Python does. */
    void collapse(long maxBuckets) {
        if (size <= maxBuckets) {
            return;
        }
        int excess = (int) (size - maxBuckets);
        double target = weights[excess];
        for (int i = 0; i < excess; i++) {
            target += weights[i];
        }
        weights[excess] = target;
        size -= excess;
        System.arraycopy(keys, excess, keys, 0, size);
        System.arraycopy(weights, excess, weights, 0, size);
    }

    void copyFrom(SketchStore other) {
        keys = Arrays.copyOf(other.keys, Math.max(other.size, 4));
        weights = Arrays.copyOf(other.weights, Math.max(other.size, 4));
        size = other.size;
    }

    boolean allExactIntegers() {
        for (int i = 0; i < size; i++) {
            if (!DDSketch.isExactInteger(weights[i])) {
                return false;
            }
        }
        return true;
    }

    double fsum() {
        return DDSketch.fsum(weights, size);
    }

    boolean sameAs(SketchStore other) {
        return Arrays.equals(keys, 0, size, other.keys, 0, other.size)
                && Arrays.equals(weights, 0, size, other.weights, 0, other.size);
    }

    private void ensureCapacity(int n) {
        if (n > keys.length) {
            int capacity = Math.max(n, 2 * keys.length);
            keys = Arrays.copyOf(keys, capacity);
            weights = Arrays.copyOf(weights, capacity);
        }
    }
}
