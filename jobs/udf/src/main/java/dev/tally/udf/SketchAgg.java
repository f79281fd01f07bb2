package dev.tally.udf;

import java.io.IOException;

import org.apache.flink.api.common.typeutils.SimpleTypeSerializerSnapshot;
import org.apache.flink.api.common.typeutils.TypeSerializerSnapshot;
import org.apache.flink.api.common.typeutils.base.TypeSerializerSingleton;
import org.apache.flink.core.memory.DataInputView;
import org.apache.flink.core.memory.DataOutputView;
import org.apache.flink.table.annotation.DataTypeHint;
import org.apache.flink.table.annotation.FunctionHint;
import org.apache.flink.table.functions.AggregateFunction;
import org.apache.flink.table.functions.FunctionContext;

/**
 * {@code sketch_agg(sk BYTES) -> BYTES}: merges encoded sketches; the result is byte-identical
 * to Python decoding the same sketches and merging them in order ({@code
 * functools.reduce(Sketch.merge, ...)}), which for integral counts is any order.
 *
 * <p>NULL inputs are ignored; the result is NULL when no non-NULL input was seen. Inputs
 * Python would reject (undecodable bytes, an alpha other than that of the first sketch seen)
 * are skipped and counted in {@code sketch_agg_invalidInputs}.
 *
 * <p>Accumulator: {@link Acc} holds the decoded, mutable {@link DDSketch}, so accumulate is
 * "decode the input into a reused scratch sketch, add its buckets" and nothing is encoded
 * until getValue. Its SQL type is {@code RAW(SketchAgg.Acc)} with {@link AccSerializer}, which
 * writes the canonical sketch encoding: state, checkpoints and the local-to-global shuffle of
 * two-phase aggregation carry exactly Python's bytes, and need no Kryo.
 */
@FunctionHint(
        input = @DataTypeHint("BYTES"),
        accumulator = @DataTypeHint(value = "RAW", bridgedTo = SketchAgg.Acc.class,
                rawSerializer = SketchAgg.AccSerializer.class),
        output = @DataTypeHint("BYTES"))
public final class SketchAgg extends AggregateFunction<byte[], SketchAgg.Acc> {
    private static final long serialVersionUID = 1L;
    /** The SQL name used by tally.udf.register_udfs. */
    public static final String NAME = "sketch_agg";

    private final InvalidInputs invalid = new InvalidInputs(NAME);
    private transient DDSketch scratch; // decoded input; adopted by an empty accumulator

    /** The merged sketch so far; null until the first valid input. */
    public static final class Acc {
        DDSketch sketch;

        /** The merged sketch (live, not a copy), or null when nothing was added. */
        public DDSketch sketch() {
            return sketch;
        }
    }

    @Override
    public void open(FunctionContext context) {
        invalid.open(context);
    }

    @Override
    public Acc createAccumulator() {
        return new Acc();
    }

    /** Merges one encoded sketch into the accumulator. */
    public void accumulate(Acc acc, byte[] encoded) {
        if (encoded == null) {
            return;
        }
        DDSketch input = scratch != null ? scratch : new DDSketch();
        try {
            input.readFrom(encoded);
        } catch (SketchDecodeException e) {
            scratch = input;
            invalid.record("undecodable sketch: " + e.getMessage());
            return;
        }
        if (acc.sketch == null) {
            acc.sketch = input; // adopt the decoded sketch: no copy
            scratch = null;
        } else {
            scratch = input;
            mergeInto(acc, input);
        }
    }

    /** Merges partial accumulators (local-global aggregation, window merging). */
    public void merge(Acc acc, Iterable<Acc> others) {
        for (Acc other : others) {
            if (other.sketch == null) {
                continue;
            }
            if (acc.sketch == null) {
                acc.sketch = other.sketch.copy(); // Flink may reuse the other accumulator
            } else {
                mergeInto(acc, other.sketch);
            }
        }
    }

    @Override
    public byte[] getValue(Acc acc) {
        return acc.sketch == null ? null : acc.sketch.toBytes();
    }

    public void resetAccumulator(Acc acc) {
        acc.sketch = null;
    }

    private void mergeInto(Acc acc, DDSketch other) {
        if (other.alpha() != acc.sketch.alpha()) {
            invalid.record("alpha " + other.alpha() + " differs from " + acc.sketch.alpha());
            return;
        }
        acc.sketch.merge(other);
    }

    long invalidInputs() {
        return invalid.count();
    }

    /**
     * Serializes an {@link Acc} as an int length (-1: no sketch) and the canonical sketch
     * encoding. Instantiated by Flink through its public no-argument constructor.
     */
    public static final class AccSerializer extends TypeSerializerSingleton<Acc> {
        private static final long serialVersionUID = 1L;
        static final AccSerializer INSTANCE = new AccSerializer();

        public AccSerializer() {}

        @Override
        public boolean isImmutableType() {
            return false;
        }

        @Override
        public Acc createInstance() {
            return new Acc();
        }

        @Override
        public Acc copy(Acc from) {
            Acc copy = new Acc();
            copy.sketch = from.sketch == null ? null : from.sketch.copy();
            return copy;
        }

        @Override
        public Acc copy(Acc from, Acc reuse) {
            return copy(from);
        }

        @Override
        public int getLength() {
            return -1;
        }

        @Override
        public void serialize(Acc acc, DataOutputView target) throws IOException {
            if (acc.sketch == null) {
                target.writeInt(-1);
                return;
            }
            byte[] bytes = acc.sketch.toBytes();
            target.writeInt(bytes.length);
            target.write(bytes);
        }

        @Override
        public Acc deserialize(DataInputView source) throws IOException {
            Acc acc = new Acc();
            int length = source.readInt();
            if (length >= 0) {
                byte[] bytes = new byte[length];
                source.readFully(bytes);
                try {
                    acc.sketch = DDSketch.fromBytes(bytes);
                } catch (SketchDecodeException e) {
                    throw new IOException("corrupt sketch_agg accumulator: " + e.getMessage(), e);
                }
            }
            return acc;
        }

        @Override
        public Acc deserialize(Acc reuse, DataInputView source) throws IOException {
            return deserialize(source);
        }

        @Override
        public void copy(DataInputView source, DataOutputView target) throws IOException {
            int length = source.readInt();
            target.writeInt(length);
            if (length > 0) {
                // Not target.write(source, length): DataOutputSerializer does not grow for it.
                byte[] bytes = new byte[length];
                source.readFully(bytes);
                target.write(bytes);
            }
        }

        @Override
        public TypeSerializerSnapshot<Acc> snapshotConfiguration() {
            return new AccSerializerSnapshot();
        }
    }

    /** Restores {@link AccSerializer} from savepoints; the format is versioned in the bytes. */
    public static final class AccSerializerSnapshot extends SimpleTypeSerializerSnapshot<Acc> {
        public AccSerializerSnapshot() {
            super(() -> AccSerializer.INSTANCE);
        }
    }
}
