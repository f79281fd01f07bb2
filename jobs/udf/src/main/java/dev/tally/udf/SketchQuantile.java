package dev.tally.udf;

import org.apache.flink.table.annotation.DataTypeHint;
import org.apache.flink.table.functions.FunctionContext;
import org.apache.flink.table.functions.ScalarFunction;

/**
 * {@code sketch_quantile(sk BYTES, q DOUBLE) -> DOUBLE}: the value at quantile {@code q} of an
 * encoded sketch, as Python's {@code Sketch.from_bytes(sk).quantile(q)} (answers may differ in
 * the last bit, see {@link DDSketch}).
 *
 * <p>NULL when either argument is NULL or the sketch is empty. An undecodable sketch or a
 * {@code q} outside [0, 1] gives NULL and is counted in {@code sketch_quantile_invalidInputs}.
 */
public final class SketchQuantile extends ScalarFunction {
    private static final long serialVersionUID = 1L;
    /** The SQL name used by tally.udf.register_udfs. */
    public static final String NAME = "sketch_quantile";

    private final InvalidInputs invalid = new InvalidInputs(NAME);
    private transient DDSketch scratch;

    @Override
    public void open(FunctionContext context) {
        invalid.open(context);
    }

    /** The value at quantile {@code q} of the encoded sketch {@code sketch}. */
    public @DataTypeHint("DOUBLE") Double eval(
            @DataTypeHint("BYTES") byte[] sketch, @DataTypeHint("DOUBLE") Double q) {
        if (sketch == null || q == null) {
            return null;
        }
        if (!(q >= 0.0 && q <= 1.0)) {
            invalid.record("quantile " + q + " is outside [0, 1]");
            return null;
        }
        if (scratch == null) {
            scratch = new DDSketch();
        }
        try {
            scratch.readFrom(sketch);
        } catch (SketchDecodeException e) {
            invalid.record("undecodable sketch: " + e.getMessage());
            return null;
        }
        return scratch.quantile(q);
    }

    long invalidInputs() {
        return invalid.count();
    }
}
