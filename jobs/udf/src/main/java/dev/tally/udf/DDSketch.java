package dev.tally.udf;

import java.util.Arrays;
import java.util.Objects;

/**
 * Mergeable quantile sketch with relative accuracy {@code alpha}: a plain Java port of
 * {@code tally/sketch.py} whose {@link #toBytes()} is byte-for-byte the same as Python's
 * {@code Sketch.to_bytes()} for the same contents, and whose {@link #fromBytes(byte[])}
 * accepts exactly what {@code Sketch.from_bytes} accepts (see "Differences" below).
 *
 * <p>A positive value {@code v} goes to key {@code ceil(ln(v) / ln(gamma))} with {@code gamma
 * = (1 + alpha) / (1 - alpha)}; negative values go to a second store keyed by magnitude;
 * magnitudes below {@link #MIN_INDEXABLE} count as zero. Each store keeps at most {@code
 * maxBuckets} keys: when it grows beyond that, its lowest keys are folded into the lowest key
 * that is kept. Counts are doubles (StatsD sample rates weight values).
 *
 * <p>Every floating-point operation that reaches the encoding happens in the same order as in
 * Python, so even non-integral counts encode identically. {@link Math#log} is used for keys
 * because it agrees with glibc's {@code log} (what CPython calls) far more often than {@link
 * StrictMath#log}: on 2 million values, many of them adversarially close to bucket
 * boundaries, no key differed. {@link #quantile} answers may differ from Python's in the
 * last bit (Java's and glibc's {@code exp} round differently in ~0.2 % of cases); keys,
 * counts and encodings do not.
 *
 * <p>Differences from Python, for inputs no Tally code produces: an encoded {@code
 * max_buckets} of 2^63 or more is rejected (Python's ints are unbounded), and alphas so small
 * that {@code gamma} rounds to 1 are rejected with IllegalArgumentException where Python
 * raises ZeroDivisionError. Keys are longs, so every other alpha works as in Python.
 *
 * <p>Not thread-safe; mutable, like the Python class.
 */
public final class DDSketch {
    public static final double DEFAULT_ALPHA = 0.01;
    public static final int DEFAULT_MAX_BUCKETS = 2048;
    /** Magnitudes below this count as zero. */
    public static final double MIN_INDEXABLE = 1e-300;
    /** Magnitudes above this are rejected. */
    public static final double MAX_INDEXABLE = 1e300;

    private static final int FORMAT_VERSION = 1;
    private static final int FLAG_FLOAT_COUNTS = 0x01;
    private static final int KNOWN_FLAGS = FLAG_FLOAT_COUNTS;
    /** Integral counts up to 2^53 are exact in a double, so they round-trip through varints. */
    private static final double MAX_EXACT_INT = 9007199254740992.0;
    /** Bridging up to this many empty keys costs no more bytes than starting a new run. */
    private static final long MAX_BRIDGED_GAP = 2;

    private double alpha;
    private double gamma;
    private double lnGamma;
    private long minKey;
    private long maxKey;
    private long maxBuckets;
    private double zero;
    private final SketchStore pos = new SketchStore();
    private final SketchStore neg = new SketchStore();

    /** An empty sketch with alpha 0.01 and at most 2048 buckets per store. */
    public DDSketch() {
        this(DEFAULT_ALPHA, DEFAULT_MAX_BUCKETS);
    }

    /** An empty sketch; alpha must be in (0, 1) and maxBuckets positive. */
    public DDSketch(double alpha, long maxBuckets) {
        configure(alpha, maxBuckets);
    }

    private void configure(double alpha, long maxBuckets) {
        if (!(alpha > 0.0 && alpha < 1.0)) {
            throw new IllegalArgumentException("alpha must be in (0, 1), got " + alpha);
        }
        if (maxBuckets < 1) {
            throw new IllegalArgumentException("max_buckets must be positive, got " + maxBuckets);
        }
        if (alpha != this.alpha) { // decoding sketches of one alpha skips the logs
            double g = (1.0 + alpha) / (1.0 - alpha);
            double lg = Math.log(g);
            double lo = Math.ceil(Math.log(MIN_INDEXABLE) / lg);
            double hi = Math.ceil(Math.log(MAX_INDEXABLE) / lg);
            // Finite unless gamma rounded to 1 (lg == 0); at most ~3.1e18 otherwise, which leaves
            // headroom for maxKey - minKey in a long.
            if (!(Math.abs(lo) < 0x1p62 && Math.abs(hi) < 0x1p62)) {
                throw new IllegalArgumentException("alpha " + alpha + " is too small: gamma rounds to 1");
            }
            this.alpha = alpha;
            this.gamma = g;
            this.lnGamma = lg;
            this.minKey = (long) lo;
            this.maxKey = (long) hi;
        }
        this.maxBuckets = maxBuckets;
    }

    // -- properties --------------------------------------------------------------------

    /** The relative accuracy guarantee of quantile answers. */
    public double alpha() {
        return alpha;
    }

    /** The cap on the number of buckets per store. */
    public long maxBuckets() {
        return maxBuckets;
    }

    /** Total weight added: zero count + fsum(positive) + fsum(negative), as in Python. */
    public double count() {
        return zero + pos.fsum() + neg.fsum();
    }

    /** Number of non-empty buckets (zero bucket excluded). */
    public int bucketCount() {
        return pos.size + neg.size;
    }

    /** True when nothing has been added. */
    public boolean isEmpty() {
        return zero == 0.0 && pos.size == 0 && neg.size == 0;
    }

    // -- adding and merging ------------------------------------------------------------

    /**
     * Adds {@code value} with weight {@code count}; returns this. Throws
     * IllegalArgumentException for non-finite values, magnitudes above MAX_INDEXABLE and
     * negative or non-finite counts; a count of 0 is a no-op.
     */
    public DDSketch add(double value, double count) {
        if (!(count >= 0.0 && count < Double.POSITIVE_INFINITY)) {
            throw new IllegalArgumentException("count must be finite and >= 0, got " + count);
        }
        double magnitude = Math.abs(value);
        if (!(magnitude <= MAX_INDEXABLE)) { // also NaN
            throw new IllegalArgumentException(
                    "value must be finite with |value| <= " + MAX_INDEXABLE + ", got " + value);
        }
        if (count == 0.0) {
            return this;
        }
        if (magnitude < MIN_INDEXABLE) {
            zero += count;
            return this;
        }
        SketchStore store = value > 0 ? pos : neg;
        store.add((long) Math.ceil(Math.log(magnitude) / lnGamma), count);
        store.collapse(maxBuckets);
        return this;
    }

    /** Adds {@code value} with weight 1. */
    public DDSketch add(double value) {
        return add(value, 1.0);
    }

    /**
     * Adds all of {@code other}'s weight into this sketch; returns this. Both must have the
     * same alpha (else IllegalArgumentException); the result keeps the smaller bucket cap.
     */
    public DDSketch merge(DDSketch other) {
        Objects.requireNonNull(other, "other");
        if (other.alpha != alpha) {
            throw new IllegalArgumentException(
                    "cannot merge sketches with alpha " + alpha + " and " + other.alpha);
        }
        if (other == this) {
            other = other.copy();
        }
        maxBuckets = Math.min(maxBuckets, other.maxBuckets);
        zero += other.zero;
        // Python collapses once per store after adding all keys, and so must we: collapsing
        // per key would sum the folded weights in a different order.
        pos.mergeFrom(other.pos);
        pos.collapse(maxBuckets);
        neg.mergeFrom(other.neg);
        neg.collapse(maxBuckets);
        return this;
    }

    /** An independent copy. */
    public DDSketch copy() {
        DDSketch clone = new DDSketch(alpha, maxBuckets);
        clone.zero = zero;
        clone.pos.copyFrom(pos);
        clone.neg.copyFrom(neg);
        return clone;
    }

    /** Removes all weight, keeping alpha and the bucket cap. */
    public void clear() {
        zero = 0.0;
        pos.size = 0;
        neg.size = 0;
    }

    // -- querying ------------------------------------------------------------------------

    /**
     * The value at quantile {@code q} in [0, 1], or null for an empty sketch: within alpha of
     * the sample at rank floor(q * (count - 1)), as in Python.
     */
    public Double quantile(double q) {
        if (!(q >= 0.0 && q <= 1.0)) {
            throw new IllegalArgumentException("quantile must be in [0, 1], got " + q);
        }
        if (isEmpty()) {
            return null;
        }
        double rank = q * (count() - 1.0);
        double cumulative = 0.0;
        double value = 0.0;
        for (int i = neg.size - 1; i >= 0; i--) { // most negative first
            value = -bucketValue(neg.keys[i]);
            cumulative += neg.weights[i];
            if (cumulative > rank) {
                return value;
            }
        }
        if (zero != 0.0) {
            value = 0.0;
            cumulative += zero;
            if (cumulative > rank) {
                return value;
            }
        }
        for (int i = 0; i < pos.size; i++) {
            value = bucketValue(pos.keys[i]);
            cumulative += pos.weights[i];
            if (cumulative > rank) {
                return value;
            }
        }
        return value; // rounding left the top rank unreached: answer the largest bucket
    }

    private double bucketValue(long key) {
        return 2.0 * Math.exp(key * lnGamma) / (gamma + 1.0);
    }

    // -- equality --------------------------------------------------------------------------

    @Override
    public boolean equals(Object o) {
        if (!(o instanceof DDSketch)) {
            return false;
        }
        DDSketch other = (DDSketch) o;
        return alpha == other.alpha && maxBuckets == other.maxBuckets && zero == other.zero
                && pos.sameAs(other.pos) && neg.sameAs(other.neg);
    }

    @Override
    public int hashCode() {
        return Objects.hash(alpha, maxBuckets, zero + 0.0, pos.size, neg.size);
    }

    @Override
    public String toString() {
        return "DDSketch(alpha=" + alpha + ", count=" + count() + ", buckets=" + bucketCount()
                + ", zero=" + zero + ")";
    }

    // -- encoding --------------------------------------------------------------------------

    /** Encodes exactly like Python's {@code Sketch.to_bytes()} (format version 1). */
    public byte[] toBytes() {
        boolean floatCounts = !(isExactInteger(zero) && pos.allExactIntegers() && neg.allExactIntegers());
        SketchWriter out = new SketchWriter(24 + (floatCounts ? 9 : 3) * (pos.size + neg.size));
        out.u8(FORMAT_VERSION);
        out.u8(floatCounts ? FLAG_FLOAT_COUNTS : 0);
        out.f64(alpha);
        out.uvarint(maxBuckets);
        out.count(zero, floatCounts);
        writeStore(out, pos, floatCounts);
        writeStore(out, neg, floatCounts);
        return out.toByteArray();
    }

    static boolean isExactInteger(double w) {
        return w == Math.floor(w) && w <= MAX_EXACT_INT;
    }

    private static void writeStore(SketchWriter out, SketchStore store, boolean floatCounts) {
        long[] keys = store.keys;
        int n = store.size;
        int runs = 0;
        for (int i = 0; i < n; i++) {
            if (i == 0 || keys[i] - keys[i - 1] > MAX_BRIDGED_GAP + 1) {
                runs++;
            }
        }
        out.uvarint(runs);
        long previousEnd = 0;
        for (int i = 0; i < n; ) {
            int j = i;
            while (j + 1 < n && keys[j + 1] - keys[j] <= MAX_BRIDGED_GAP + 1) {
                j++;
            }
            long start = keys[i];
            long end = keys[j];
            out.uvarint(i == 0 ? zigzag(start) : start - previousEnd);
            out.uvarint(end - start + 1);
            int next = i;
            for (long key = start; key <= end; key++) {
                if (keys[next] == key) {
                    out.count(store.weights[next++], floatCounts);
                } else {
                    out.count(0.0, floatCounts); // a bridged empty key
                }
            }
            previousEnd = end;
            i = j + 1;
        }
    }

    /**
     * Decodes {@link #toBytes()} (or Python {@code to_bytes()}) output. Throws {@link
     * SketchDecodeException} (an IllegalArgumentException) on any input Python rejects.
     *
     * <pre>
     * u8 version (=1) | u8 flags (bit 0: counts are float64, else uvarint)
     * f64le alpha | uvarint max_buckets | count zero_count | store positive | store negative
     * store = uvarint n_runs, then per run: first run zigzag(start key), later runs
     *         uvarint (start - previous run end); uvarint run length; one count per key
     * </pre>
     */
    public static DDSketch fromBytes(byte[] data) {
        DDSketch sketch = new DDSketch();
        sketch.readFrom(data);
        return sketch;
    }

    /**
     * Replaces this sketch's contents (alpha and cap included) with the decoded {@code data}.
     * After a SketchDecodeException the contents are unspecified: for scratch sketches only.
     */
    void readFrom(byte[] data) {
        Objects.requireNonNull(data, "data");
        SketchReader in = new SketchReader(data);
        int version = in.u8("version");
        if (version != FORMAT_VERSION) {
            throw new SketchDecodeException("unsupported sketch format version " + version);
        }
        int flags = in.u8("flags");
        if ((flags & ~KNOWN_FLAGS) != 0) {
            throw new SketchDecodeException(String.format("unknown flag bits 0x%02x", flags));
        }
        double a = in.f64("alpha");
        if (!(a > 0.0 && a < 1.0)) {
            throw new SketchDecodeException("alpha " + a + " is outside (0, 1)");
        }
        long cap = in.uvarint("max_buckets");
        if (cap < 1) { // 0, or HUGE: 2^63 and more (Python accepts those; nobody writes them)
            throw new SketchDecodeException("max_buckets must be positive and below 2^63");
        }
        try {
            configure(a, cap);
        } catch (IllegalArgumentException e) {
            throw new SketchDecodeException(e.getMessage());
        }
        boolean floatCounts = (flags & FLAG_FLOAT_COUNTS) != 0;
        pos.size = 0;
        neg.size = 0;
        zero = in.weight(floatCounts, "zero count");
        readStore(in, pos, "positive", floatCounts);
        readStore(in, neg, "negative", floatCounts);
        if (in.pos != data.length) {
            throw new SketchDecodeException((data.length - in.pos) + " trailing bytes");
        }
    }

    private void readStore(SketchReader in, SketchStore store, String name, boolean floatCounts) {
        long runs = in.uvarint(name + " run count");
        if (runs < 0 || runs > in.data.length) { // each run takes >= 3 bytes: Python runs out
            throw in.truncated(name + " runs");
        }
        long key = 0;
        for (long run = 0; run < runs; run++) {
            if (run == 0) {
                long z = in.uvarint(name + " start key");
                if (z < 0) {
                    throw new SketchDecodeException(name + " start key out of range");
                }
                key = (z >>> 1) ^ -(z & 1);
            } else {
                long gap = in.uvarint(name + " key gap");
                if (gap == 0) {
                    throw new SketchDecodeException(name + " keys not ascending at offset " + in.pos);
                }
                if (gap < 0 || gap > maxKey - key) { // HUGE, or past the largest key
                    throw new SketchDecodeException(name + " key gap out of range");
                }
                key += gap;
            }
            long length = in.uvarint(name + " run length");
            if (length < 1 || key < minKey || key > maxKey || length - 1 > maxKey - key) {
                throw new SketchDecodeException(name + " run at key " + key + " (length " + length
                        + ") out of range");
            }
            long last = key + length - 1;
            for (long k = key; k <= last; k++) {
                double weight = in.weight(floatCounts, name + " count");
                if (weight != 0.0) {
                    store.append(k, weight);
                    if (store.size > maxBuckets) {
                        throw new SketchDecodeException(name + " store exceeds max_buckets " + maxBuckets);
                    }
                }
            }
            key = last;
        }
    }

    private static long zigzag(long n) {
        return n >= 0 ? 2 * n : -2 * n - 1;
    }

    /**
     * Exactly rounded sum of {@code xs[0..n)}, a port of CPython's {@code math.fsum} (Shewchuk
     * partials plus its half-even fix-up), so that {@link #count()} equals Python's bit for bit.
     * Intermediate overflow gives infinity (Python raises OverflowError); the inputs are
     * finite and non-negative.
     */
    static double fsum(double[] xs, int n) {
        double[] p = new double[16];
        int np = 0;
        for (int k = 0; k < n; k++) {
            double x = xs[k];
            int i = 0;
            for (int j = 0; j < np; j++) {
                double y = p[j];
                if (Math.abs(x) < Math.abs(y)) {
                    double t = x;
                    x = y;
                    y = t;
                }
                double hi = x + y;
                double lo = y - (hi - x);
                if (lo != 0.0) {
                    p[i++] = lo;
                }
                x = hi;
            }
            np = i;
            if (x != 0.0) {
                if (Double.isInfinite(x)) {
                    return x;
                }
                if (np == p.length) {
                    p = Arrays.copyOf(p, 2 * np);
                }
                p[np++] = x;
            }
        }
        double hi = 0.0;
        double lo = 0.0;
        if (np > 0) {
            hi = p[--np];
            while (np > 0) {
                double x = hi;
                double y = p[--np];
                hi = x + y;
                lo = y - (hi - x);
                if (lo != 0.0) {
                    break;
                }
            }
            if (np > 0 && ((lo < 0.0 && p[np - 1] < 0.0) || (lo > 0.0 && p[np - 1] > 0.0))) {
                double y = lo * 2.0;
                double x = hi + y;
                if (y == x - hi) {
                    hi = x;
                }
            }
        }
        return hi;
    }
}
