package dev.tally.udf;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertNull;

import java.util.ArrayList;
import java.util.List;
import java.util.Random;

import org.junit.jupiter.api.RepeatedTest;
import org.junit.jupiter.api.Test;

/** last_by_time must pick exactly what tally.aggregate.Aggregate's last picks. */
class LastByTimeTest {
    private static final Random SEED = new Random(9);

    private static Double last(long[] times, double[] values) {
        LastByTime f = new LastByTime();
        LastByTime.Acc acc = f.createAccumulator();
        for (int i = 0; i < times.length; i++) {
            f.accumulate(acc, times[i], values[i]);
        }
        return f.getValue(acc);
    }

    @Test
    void latestTimeWinsRegardlessOfArrivalOrder() {
        assertEquals(2.0, last(new long[] {10, 30, 20}, new double[] {1.0, 2.0, 3.0}));
        assertEquals(2.0, last(new long[] {30, 10, 20}, new double[] {2.0, 1.0, 3.0}));
        assertEquals(-5.0, last(new long[] {-100, Long.MIN_VALUE}, new double[] {-5.0, 99.0}));
    }

    @Test
    void timeTieGoesToTheLargerValue() {
        assertEquals(7.0, last(new long[] {5, 5, 5}, new double[] {3.0, 7.0, -1.0}));
        assertEquals(7.0, last(new long[] {5, 5}, new double[] {7.0, 3.0}));
    }

    @Test
    void negativeZeroIsNormalisedLikeTallyAggregate() {
        // Aggregate adds 0.0 to every value, so -0.0 and 0.0 tie and the answer is +0.0.
        Double got = last(new long[] {5, 5}, new double[] {-0.0, 0.0});
        assertEquals(0, Double.compare(0.0, got), "got " + got);
        got = last(new long[] {5}, new double[] {-0.0});
        assertEquals(0, Double.compare(0.0, got), "got " + got);
        assertEquals(-1.0, last(new long[] {5, 5}, new double[] {-1.0, -1.0}));
    }

    @Test
    void nullsAndNonFiniteValuesAreSkipped() {
        LastByTime f = new LastByTime();
        LastByTime.Acc acc = f.createAccumulator();
        assertNull(f.getValue(acc));
        f.accumulate(acc, null, 1.0);
        f.accumulate(acc, 1L, null);
        assertNull(f.getValue(acc));
        f.accumulate(acc, 1L, 4.0);
        f.accumulate(acc, 2L, Double.NaN);
        f.accumulate(acc, 3L, Double.POSITIVE_INFINITY);
        assertEquals(4.0, f.getValue(acc));
        assertEquals(2, f.invalidInputs());
        f.resetAccumulator(acc);
        assertNull(f.getValue(acc));
    }

    @RepeatedTest(20)
    void mergeOfPartialsEqualsSequentialAccumulate() {
        Random rng = new Random(SEED.nextLong());
        int n = 1 + rng.nextInt(100);
        long[] times = new long[n];
        double[] values = new double[n];
        for (int i = 0; i < n; i++) {
            times[i] = rng.nextInt(20); // many ties
            values[i] = rng.nextInt(7) - 3 + (rng.nextBoolean() ? -0.0 : 0.0);
        }
        LastByTime f = new LastByTime();
        List<LastByTime.Acc> partials = new ArrayList<>();
        for (int i = 1 + rng.nextInt(4); i > 0; i--) {
            partials.add(f.createAccumulator());
        }
        for (int i = 0; i < n; i++) {
            f.accumulate(partials.get(rng.nextInt(partials.size())), times[i], values[i]);
        }
        LastByTime.Acc global = f.createAccumulator();
        f.merge(global, partials);
        Double expected = last(times, values);
        assertEquals(expected, f.getValue(global));
        // and the reference rule itself: max over (time, value) pairs with -0.0 normalised
        long bestT = Long.MIN_VALUE;
        double bestV = Double.NEGATIVE_INFINITY;
        for (int i = 0; i < n; i++) {
            double v = values[i] + 0.0;
            if (times[i] > bestT || (times[i] == bestT && v > bestV)) {
                bestT = times[i];
                bestV = v;
            }
        }
        assertEquals(bestV, expected);
    }
}
