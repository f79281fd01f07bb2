package dev.tally.udf;

import static org.junit.jupiter.api.Assertions.assertArrayEquals;
import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertNotEquals;
import static org.junit.jupiter.api.Assertions.assertNull;
import static org.junit.jupiter.api.Assertions.assertThrows;
import static org.junit.jupiter.api.Assertions.assertTrue;
import static org.junit.jupiter.api.Assertions.fail;

import java.util.Random;

import org.junit.jupiter.api.RepeatedTest;
import org.junit.jupiter.api.Test;

/** Properties of the Java sketch itself; agreement with Python is SketchVectorsTest's job. */
class DDSketchTest {
    private static final Random SEED = new Random(7);

    /** Random values (some negative, some zero) with integral weights: sums are exact in any order. */
    private static DDSketch randomSketch(Random rng, long maxBuckets, int n) {
        DDSketch sketch = new DDSketch(DDSketch.DEFAULT_ALPHA, maxBuckets);
        for (int i = 0; i < n; i++) {
            double value = rng.nextInt(10) == 0 ? 0.0 : Math.exp(rng.nextGaussian() * 6) * (rng.nextInt(4) == 0 ? -1 : 1);
            sketch.add(value, 1 + rng.nextInt(20));
        }
        return sketch;
    }

    @RepeatedTest(25)
    void mergeIsAssociativeAndCommutative() {
        Random rng = new Random(SEED.nextLong());
        long cap = rng.nextBoolean() ? 2048 : 1 + rng.nextInt(40); // small caps exercise collapse
        DDSketch a = randomSketch(rng, cap, rng.nextInt(200));
        DDSketch b = randomSketch(rng, cap, rng.nextInt(200));
        DDSketch c = randomSketch(rng, cap, rng.nextInt(200));
        byte[] left = a.copy().merge(b).merge(c).toBytes();
        byte[] right = a.copy().merge(b.copy().merge(c)).toBytes();
        byte[] swapped = c.copy().merge(a).merge(b).toBytes();
        assertArrayEquals(left, right, "(a+b)+c != a+(b+c)");
        assertArrayEquals(left, swapped, "(a+b)+c != (c+a)+b");
    }

    @RepeatedTest(10)
    void mergingEqualsAddingEverythingToOneSketch() {
        Random rng = new Random(SEED.nextLong());
        DDSketch all = new DDSketch();
        DDSketch merged = new DDSketch();
        for (int part = 0; part < 5; part++) {
            DDSketch piece = new DDSketch();
            for (int i = rng.nextInt(300); i > 0; i--) {
                double value = Math.exp(rng.nextGaussian() * 3);
                all.add(value, 2);
                piece.add(value, 2);
            }
            merged.merge(piece);
        }
        assertEquals(all, merged);
        assertArrayEquals(all.toBytes(), merged.toBytes());
    }

    @Test
    void selfMergeDoublesEveryWeight() {
        DDSketch sketch = new DDSketch().add(1.0).add(-2.0, 3).add(0.0);
        DDSketch expected = new DDSketch().add(1.0, 2).add(-2.0, 6).add(0.0, 2);
        assertEquals(expected, sketch.merge(sketch));
    }

    @Test
    void mergeKeepsTheSmallerCapAndRejectsOtherAlphas() {
        DDSketch small = new DDSketch(0.01, 3).add(1).add(2).add(3);
        DDSketch big = new DDSketch().add(10).add(20).add(30).add(40);
        DDSketch merged = big.copy().merge(small);
        assertEquals(3, merged.maxBuckets());
        assertEquals(3, merged.bucketCount());
        assertEquals(7.0, merged.count());
        assertThrows(IllegalArgumentException.class, () -> big.merge(new DDSketch(0.02, 2048).add(1)));
    }

    @Test
    void copyIsIndependent() {
        DDSketch original = new DDSketch().add(5.0);
        DDSketch copy = original.copy();
        copy.add(6.0).add(-1.0);
        assertEquals(1.0, original.count());
        assertNotEquals(original, copy);
    }

    @Test
    void collapseFoldsLowestBucketsIntoLowestKept() {
        DDSketch sketch = new DDSketch(0.01, 2);
        sketch.add(1.0).add(10.0).add(100.0, 5);
        assertEquals(2, sketch.bucketCount());
        assertEquals(7.0, sketch.count());
        assertEquals(1.0, sketch.quantile(0.0) / 10.0, 0.011); // the 1.0 now answers as ~10
    }

    @Test
    void quantilesAreWithinAlpha() {
        Random rng = new Random(3);
        double[] data = new double[20_000];
        DDSketch sketch = new DDSketch();
        for (int i = 0; i < data.length; i++) {
            data[i] = rng.nextGaussian() * 50;
            sketch.add(data[i]);
        }
        java.util.Arrays.sort(data);
        for (double q : new double[] {0, 0.01, 0.1, 0.5, 0.9, 0.99, 0.999, 1}) {
            double expected = data[(int) Math.floor(q * (data.length - 1))];
            double got = sketch.quantile(q);
            assertTrue(Math.abs(got - expected) <= 0.01 * (1 + 1e-9) * Math.abs(expected), q + ": " + got + " vs " + expected);
        }
    }

    @Test
    void emptyAndInvalidQuantiles() {
        assertNull(new DDSketch().quantile(0.5));
        assertTrue(new DDSketch().isEmpty());
        assertThrows(IllegalArgumentException.class, () -> new DDSketch().add(1).quantile(1.5));
        assertThrows(IllegalArgumentException.class, () -> new DDSketch().add(1).quantile(Double.NaN));
    }

    @Test
    void constructorRejectsBadParameters() {
        // 1e-17: gamma rounds to 1 (Python: ZeroDivisionError on the first add).
        for (double alpha : new double[] {0, 1, -0.1, Double.NaN, 1e-17}) {
            assertThrows(IllegalArgumentException.class, () -> new DDSketch(alpha, 2048), "alpha " + alpha);
        }
        assertThrows(IllegalArgumentException.class, () -> new DDSketch(0.01, 0));
        DDSketch tiny = new DDSketch(2e-16, 4).add(1e300).add(-1e-300).add(3.0); // keys near 3e18
        assertEquals(tiny, DDSketch.fromBytes(tiny.toBytes()));
    }

    @Test
    void fsumIsExactlyRounded() {
        double[] tenths = new double[10];
        java.util.Arrays.fill(tenths, 0.1);
        assertEquals(1.0, DDSketch.fsum(tenths, 10));
        // CPython's half-even fix-up: the 1e-16 makes the 1 round the last digit up.
        assertEquals(1.0000000000000002e16, DDSketch.fsum(new double[] {1e-16, 1, 1e16}, 3));
        assertEquals(1e-100, DDSketch.fsum(new double[] {1e100, 1.0, -1e100, 1e-100, 1e50, -1.0, -1e50}, 7));
        assertEquals(0.0, DDSketch.fsum(new double[0], 0));
    }

    @Test
    void decoderThrowsOnlySketchDecodeExceptionOnGarbage() {
        Random rng = new Random(11);
        byte[] valid = randomSketch(rng, 2048, 50).toBytes();
        int accepted = 0;
        for (int i = 0; i < 50_000; i++) {
            byte[] data;
            if (i % 2 == 0) {
                data = new byte[rng.nextInt(40)];
                rng.nextBytes(data);
                if (data.length > 1) {
                    data[0] = 1; // get past the version byte most of the time
                    data[1] &= 1;
                }
            } else {
                data = valid.clone();
                for (int flips = 1 + rng.nextInt(3); flips > 0; flips--) {
                    data[rng.nextInt(data.length)] = (byte) rng.nextInt(256);
                }
            }
            try {
                DDSketch decoded = DDSketch.fromBytes(data);
                DDSketch.fromBytes(decoded.toBytes()); // whatever decodes must re-encode validly
                accepted++;
            } catch (SketchDecodeException expected) {
                // fine
            } catch (RuntimeException e) {
                fail("unexpected " + e + " for " + Vectors.HEX.formatHex(data), e);
            }
        }
        assertTrue(accepted > 0, "the fuzzer never produced a valid sketch");
    }
}
