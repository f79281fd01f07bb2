package dev.tally.udf;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertNull;

import org.junit.jupiter.api.Test;

class MaxBeforeTest {
    private static Long next(MaxBefore f, MaxBefore.Acc acc, Long seq) {
        f.accumulate(acc, seq);
        return f.getValue(acc);
    }

    @Test
    void returnsTheMaximumOfThePreviousRowsOnly() {
        MaxBefore f = new MaxBefore();
        MaxBefore.Acc acc = f.createAccumulator();
        assertNull(next(f, acc, 1L));           // first row: nothing before it
        assertEquals(1L, next(f, acc, 2L));
        assertEquals(2L, next(f, acc, 3L));
        assertEquals(3L, next(f, acc, 1L));     // a replay of 1: 1 <= 3
        assertEquals(3L, next(f, acc, 3L));     // a replay of the newest: 3 <= 3
        assertEquals(3L, next(f, acc, 4L));
        assertEquals(4L, next(f, acc, null));   // NULL does not move the maximum
        assertEquals(4L, next(f, acc, 5L));
    }

    @Test
    void resetForgetsEverything() {
        MaxBefore f = new MaxBefore();
        MaxBefore.Acc acc = f.createAccumulator();
        next(f, acc, 7L);
        f.resetAccumulator(acc);
        assertNull(next(f, acc, 2L));
    }
}
