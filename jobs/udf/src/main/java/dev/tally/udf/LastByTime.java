package dev.tally.udf;

import org.apache.flink.table.annotation.DataTypeHint;
import org.apache.flink.table.functions.AggregateFunction;
import org.apache.flink.table.functions.FunctionContext;

/**
 * {@code last_by_time(ts BIGINT, v DOUBLE) -> DOUBLE}: the value of the largest {@code (ts, v)}
 * pair, i.e. the value with the latest event time, a tie going to the larger value — exactly
 * {@code last} of Python's {@code tally.aggregate.Aggregate}, including its normalisation of
 * -0.0 to +0.0 (so 0.0 and -0.0 tie and the result is never -0.0).
 *
 * <p>Rows with a NULL argument are ignored; non-finite values (which {@code Aggregate} rejects)
 * are ignored and counted in {@code last_by_time_invalidInputs}. NULL when no row counted. The
 * time of the last value is simply {@code MAX(ts)} over the same rows, so there is no separate
 * function for it.
 *
 * <p>The accumulator is a structured type of three NOT NULL fields; merge() makes the function
 * usable in local-global (two-phase) and window aggregation.
 */
public final class LastByTime extends AggregateFunction<Double, LastByTime.Acc> {
    private static final long serialVersionUID = 1L;
    /** The SQL name used by tally.udf.register_udfs. */
    public static final String NAME = "last_by_time";

    private final InvalidInputs invalid = new InvalidInputs(NAME);

    /** The best (timeMs, value) pair so far; {@code present} is false until the first one. */
    public static final class Acc {
        public boolean present;
        public long timeMs;
        public double value;
    }

    @Override
    public void open(FunctionContext context) {
        invalid.open(context);
    }

    @Override
    public Acc createAccumulator() {
        return new Acc();
    }

    /** Offers one row. */
    public void accumulate(
            Acc acc, @DataTypeHint("BIGINT") Long timeMs, @DataTypeHint("DOUBLE") Double value) {
        if (timeMs == null || value == null) {
            return;
        }
        if (!Double.isFinite(value)) {
            invalid.record("value " + value + " is not finite");
            return;
        }
        offer(acc, timeMs, value + 0.0); // -0.0 + 0.0 == +0.0, as tally.aggregate normalises
    }

    /** Merges partial accumulators (local-global aggregation, window merging). */
    public void merge(Acc acc, Iterable<Acc> others) {
        for (Acc other : others) {
            if (other.present) {
                offer(acc, other.timeMs, other.value);
            }
        }
    }

    @Override
    public @DataTypeHint("DOUBLE") Double getValue(Acc acc) {
        return acc.present ? acc.value : null;
    }

    public void resetAccumulator(Acc acc) {
        acc.present = false;
        acc.timeMs = 0;
        acc.value = 0.0;
    }

    private static void offer(Acc acc, long timeMs, double value) {
        if (!acc.present || timeMs > acc.timeMs || (timeMs == acc.timeMs && value > acc.value)) {
            acc.present = true;
            acc.timeMs = timeMs;
            acc.value = value;
        }
    }

    long invalidInputs() {
        return invalid.count();
    }
}
