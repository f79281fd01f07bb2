package dev.tally.udf;

import org.apache.flink.table.annotation.DataTypeHint;
import org.apache.flink.table.functions.AggregateFunction;

/**
 * {@code max_before(seq BIGINT) -> BIGINT}, for {@code OVER (PARTITION BY … ORDER BY proctime
 * ROWS BETWEEN UNBOUNDED PRECEDING AND CURRENT ROW)}: the largest {@code seq} of the rows
 * <em>before</em> the current one (NULL for the first row), so a row is a replay exactly when
 * {@code seq <= max_before(seq)}.
 *
 * <p>Flink calls {@code accumulate} for the current row and then {@code getValue}; the
 * accumulator remembers the maximum as it was before that last accumulate. This replaces
 * {@code LAG(MAX(seq) OVER …) OVER …}, whose RANGE frame on processing time buffers rows
 * until the next millisecond, letting watermarks overtake them. State: two longs per key.
 */
public final class MaxBefore extends AggregateFunction<Long, MaxBefore.Acc> {
    private static final long serialVersionUID = 1L;
    /** The SQL name used by tally.udf.register_udfs. */
    public static final String NAME = "max_before";

    /** The running maximum, and the maximum before the most recent row. */
    public static final class Acc {
        public boolean present;
        public boolean presentBefore;
        public long max;
        public long maxBefore;
    }

    @Override
    public Acc createAccumulator() {
        return new Acc();
    }

    /** Takes the current row: the maximum so far becomes the maximum before it. */
    public void accumulate(Acc acc, @DataTypeHint("BIGINT") Long seq) {
        acc.presentBefore = acc.present;
        acc.maxBefore = acc.max;
        if (seq != null && (!acc.present || seq > acc.max)) {
            acc.present = true;
            acc.max = seq;
        }
    }

    @Override
    public @DataTypeHint("BIGINT") Long getValue(Acc acc) {
        return acc.presentBefore ? acc.maxBefore : null;
    }

    public void resetAccumulator(Acc acc) {
        acc.present = false;
        acc.presentBefore = false;
        acc.max = 0;
        acc.maxBefore = 0;
    }
}
