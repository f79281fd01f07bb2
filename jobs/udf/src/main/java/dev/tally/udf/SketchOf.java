package dev.tally.udf;

import org.apache.flink.table.annotation.DataTypeHint;
import org.apache.flink.table.functions.FunctionContext;
import org.apache.flink.table.functions.ScalarFunction;

/**
 * {@code sketch_of(value DOUBLE [, count DOUBLE]) -> BYTES}: the encoded sketch (alpha 0.01,
 * 2048 buckets) of one value with weight {@code count} (default 1), byte-identical to Python's
 * {@code Sketch().add(value, count).to_bytes()}.
 *
 * <p>NULL value or count gives NULL. A value or count Python's {@code Sketch.add} rejects
 * (NaN, infinite, |value| > 1e300, count < 0) gives NULL too and is counted in the metric
 * {@code sketch_of_invalidInputs}. A count of 0 gives the encoded empty sketch.
 */
public final class SketchOf extends ScalarFunction {
    private static final long serialVersionUID = 1L;
    /** The SQL name used by tally.udf.register_udfs. */
    public static final String NAME = "sketch_of";

    private final InvalidInputs invalid = new InvalidInputs(NAME);
    private transient DDSketch sketch; // reused: one encode per call, no other allocation

    @Override
    public void open(FunctionContext context) {
        invalid.open(context);
    }

    /** The encoded sketch of {@code value} with weight {@code count}. */
    public @DataTypeHint("BYTES") byte[] eval(
            @DataTypeHint("DOUBLE") Double value, @DataTypeHint("DOUBLE") Double count) {
        if (value == null || count == null) {
            return null;
        }
        if (sketch == null) {
            sketch = new DDSketch();
        }
        sketch.clear();
        try {
            sketch.add(value, count);
        } catch (IllegalArgumentException e) {
            invalid.record(e.getMessage());
            return null;
        }
        return sketch.toBytes();
    }

    /** The encoded sketch of {@code value} with weight 1. */
    public @DataTypeHint("BYTES") byte[] eval(@DataTypeHint("DOUBLE") Double value) {
        return eval(value, 1.0);
    }

    long invalidInputs() {
        return invalid.count();
    }
}
