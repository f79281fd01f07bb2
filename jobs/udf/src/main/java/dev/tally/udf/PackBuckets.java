package dev.tally.udf;

import java.io.IOException;
import java.nio.ByteBuffer;
import java.nio.ByteOrder;
import java.util.Arrays;

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
 * {@code pack_buckets(sid, ts, cnt, total, vmin, vmax, vlast, last_ts, sk) -> BYTES}: packs the
 * bucket rows of a group into one binary batch, so that the Python sink receives one record
 * per few hundred buckets instead of one per bucket (a record crossing into Python costs about
 * as much as writing it). Decoded by {@code sinks.batch.unpack_buckets}.
 *
 * <p>Layout, little-endian: {@code int32 n}; n fixed records of {@link #RECORD_BYTES} bytes
 * ({@code int64 sid, int64 ts, float64 count, sum, min, max, last, int64 last_ts, int32
 * sketch_length} with -1 for no sketch); then the sketches' bytes in record order. Row order
 * inside a batch is unspecified (merge appends).
 *
 * <p>Rows with a NULL key or aggregate field (never produced by the job's SQL) are skipped and
 * counted in {@code pack_buckets_invalidInputs}.
 */
@FunctionHint(
        accumulator = @DataTypeHint(value = "RAW", bridgedTo = PackBuckets.Acc.class,
                rawSerializer = PackBuckets.AccSerializer.class),
        output = @DataTypeHint("BYTES"))
public final class PackBuckets extends AggregateFunction<byte[], PackBuckets.Acc> {
    private static final long serialVersionUID = 1L;
    /** The SQL name used by tally.udf.register_udfs. */
    public static final String NAME = "pack_buckets";
    /** Bytes of one fixed record. */
    public static final int RECORD_BYTES = 8 * 8 + 4;

    private final InvalidInputs invalid = new InvalidInputs(NAME);

    /** The packed rows so far: fixed records and sketch bytes in two growable buffers. */
    public static final class Acc {
        int rows;
        byte[] fixed = new byte[0];
        int fixedLength;
        byte[] sketches = new byte[0];
        int sketchLength;

        void appendFixed(byte[] src, int offset, int length) {
            fixed = ensure(fixed, fixedLength + length);
            System.arraycopy(src, offset, fixed, fixedLength, length);
            fixedLength += length;
        }

        void appendSketch(byte[] src, int offset, int length) {
            sketches = ensure(sketches, sketchLength + length);
            System.arraycopy(src, offset, sketches, sketchLength, length);
            sketchLength += length;
        }

        private static byte[] ensure(byte[] buffer, int needed) {
            return needed <= buffer.length ? buffer : Arrays.copyOf(buffer, Math.max(needed, buffer.length * 2 + 64));
        }
    }

    private transient ByteBuffer record;

    @Override
    public void open(FunctionContext context) {
        invalid.open(context);
    }

    @Override
    public Acc createAccumulator() {
        return new Acc();
    }

    /** Appends one bucket row. */
    public void accumulate(
            Acc acc,
            @DataTypeHint("BIGINT") Long sid,
            @DataTypeHint("BIGINT") Long ts,
            @DataTypeHint("DOUBLE") Double count,
            @DataTypeHint("DOUBLE") Double sum,
            @DataTypeHint("DOUBLE") Double min,
            @DataTypeHint("DOUBLE") Double max,
            @DataTypeHint("DOUBLE") Double last,
            @DataTypeHint("BIGINT") Long lastTs,
            @DataTypeHint("BYTES") byte[] sketch) {
        if (sid == null || ts == null || count == null || sum == null || min == null || max == null
                || last == null || lastTs == null) {
            invalid.record("bucket row with a NULL field (sid " + sid + ", ts " + ts + ")");
            return;
        }
        if (record == null) {
            record = ByteBuffer.allocate(RECORD_BYTES).order(ByteOrder.LITTLE_ENDIAN);
        }
        record.clear();
        record.putLong(sid).putLong(ts).putDouble(count).putDouble(sum).putDouble(min).putDouble(max)
                .putDouble(last).putLong(lastTs).putInt(sketch == null ? -1 : sketch.length);
        acc.appendFixed(record.array(), 0, RECORD_BYTES);
        if (sketch != null) {
            acc.appendSketch(sketch, 0, sketch.length);
        }
        acc.rows++;
    }

    /** Merges partial accumulators (local-global aggregation). */
    public void merge(Acc acc, Iterable<Acc> others) {
        for (Acc other : others) {
            acc.appendFixed(other.fixed, 0, other.fixedLength);
            acc.appendSketch(other.sketches, 0, other.sketchLength);
            acc.rows += other.rows;
        }
    }

    @Override
    public byte[] getValue(Acc acc) {
        if (acc.rows == 0) {
            return null;
        }
        ByteBuffer out = ByteBuffer.allocate(4 + acc.fixedLength + acc.sketchLength).order(ByteOrder.LITTLE_ENDIAN);
        out.putInt(acc.rows);
        out.put(acc.fixed, 0, acc.fixedLength);
        out.put(acc.sketches, 0, acc.sketchLength);
        return out.array();
    }

    public void resetAccumulator(Acc acc) {
        acc.rows = 0;
        acc.fixedLength = 0;
        acc.sketchLength = 0;
    }

    long invalidInputs() {
        return invalid.count();
    }

    /** Serializes an {@link Acc} as its row count and its two buffers (length-prefixed). */
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
            copy.rows = from.rows;
            copy.fixed = Arrays.copyOf(from.fixed, from.fixedLength);
            copy.fixedLength = from.fixedLength;
            copy.sketches = Arrays.copyOf(from.sketches, from.sketchLength);
            copy.sketchLength = from.sketchLength;
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
            target.writeInt(acc.rows);
            target.writeInt(acc.fixedLength);
            target.write(acc.fixed, 0, acc.fixedLength);
            target.writeInt(acc.sketchLength);
            target.write(acc.sketches, 0, acc.sketchLength);
        }

        @Override
        public Acc deserialize(DataInputView source) throws IOException {
            Acc acc = new Acc();
            acc.rows = source.readInt();
            acc.fixedLength = source.readInt();
            acc.fixed = new byte[acc.fixedLength];
            source.readFully(acc.fixed);
            acc.sketchLength = source.readInt();
            acc.sketches = new byte[acc.sketchLength];
            source.readFully(acc.sketches);
            return acc;
        }

        @Override
        public Acc deserialize(Acc reuse, DataInputView source) throws IOException {
            return deserialize(source);
        }

        @Override
        public void copy(DataInputView source, DataOutputView target) throws IOException {
            serialize(deserialize(source), target);
        }

        @Override
        public TypeSerializerSnapshot<Acc> snapshotConfiguration() {
            return new AccSerializerSnapshot();
        }
    }

    /** Restores {@link AccSerializer} from savepoints. */
    public static final class AccSerializerSnapshot extends SimpleTypeSerializerSnapshot<Acc> {
        public AccSerializerSnapshot() {
            super(() -> AccSerializer.INSTANCE);
        }
    }
}
