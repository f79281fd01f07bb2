package dev.tally.udf;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertNull;

import java.io.IOException;
import java.nio.ByteBuffer;
import java.nio.ByteOrder;
import java.util.ArrayList;
import java.util.HashSet;
import java.util.List;
import java.util.Set;

import org.apache.flink.core.memory.DataInputDeserializer;
import org.apache.flink.core.memory.DataOutputSerializer;
import org.junit.jupiter.api.Test;

class PackBucketsTest {
    /** Decodes a batch into "sid,ts,count,sum,min,max,last,last_ts,sketchlen:bytes" strings. */
    static Set<String> decode(byte[] batch) {
        ByteBuffer in = ByteBuffer.wrap(batch).order(ByteOrder.LITTLE_ENDIAN);
        int n = in.getInt();
        int skPos = 4 + n * PackBuckets.RECORD_BYTES;
        Set<String> out = new HashSet<>();
        for (int i = 0; i < n; i++) {
            StringBuilder row = new StringBuilder();
            row.append(in.getLong()).append(',').append(in.getLong());
            for (int f = 0; f < 5; f++) {
                row.append(',').append(in.getDouble());
            }
            row.append(',').append(in.getLong());
            int skLen = in.getInt();
            row.append(',').append(skLen);
            if (skLen > 0) {
                for (int b = 0; b < skLen; b++) {
                    row.append(':').append(batch[skPos + b]);
                }
                skPos += skLen;
            }
            out.add(row.toString());
        }
        assertEquals(batch.length, skPos, "every byte belongs to a record or a sketch");
        return out;
    }

    private static void add(PackBuckets f, PackBuckets.Acc acc, long sid, byte[] sk) {
        f.accumulate(acc, sid, 1000L * sid, 2.0, 3.5, -1.0, 7.25, 4.0, 1000L * sid + 999, sk);
    }

    @Test
    void mergedPartialsHoldEveryRowOnce() throws IOException {
        PackBuckets f = new PackBuckets();
        List<PackBuckets.Acc> partials = new ArrayList<>();
        PackBuckets.Acc whole = f.createAccumulator();
        for (int p = 0; p < 3; p++) {
            partials.add(f.createAccumulator());
        }
        for (long sid = -5; sid < 40; sid++) {
            byte[] sk = sid % 3 == 0 ? new byte[] {1, 2, (byte) sid} : null;
            add(f, partials.get((int) Math.floorMod(sid, 3)), sid, sk);
            add(f, whole, sid, sk);
        }
        // Through the accumulator serializer, as the local-global shuffle does.
        List<PackBuckets.Acc> shipped = new ArrayList<>();
        for (PackBuckets.Acc acc : partials) {
            DataOutputSerializer out = new DataOutputSerializer(64);
            PackBuckets.AccSerializer.INSTANCE.serialize(acc, out);
            shipped.add(PackBuckets.AccSerializer.INSTANCE.deserialize(new DataInputDeserializer(out.getCopyOfBuffer())));
        }
        PackBuckets.Acc merged = f.createAccumulator();
        f.merge(merged, shipped);
        Set<String> expected = decode(f.getValue(whole));
        assertEquals(45, expected.size());
        assertEquals(expected, decode(f.getValue(merged)));
        assertEquals(45, ByteBuffer.wrap(f.getValue(merged)).order(ByteOrder.LITTLE_ENDIAN).getInt());
    }

    @Test
    void nullFieldsAreSkippedAndCountedEmptyIsNull() {
        PackBuckets f = new PackBuckets();
        PackBuckets.Acc acc = f.createAccumulator();
        assertNull(f.getValue(acc));
        f.accumulate(acc, null, 0L, 1.0, 1.0, 1.0, 1.0, 1.0, 0L, null);
        assertNull(f.getValue(acc));
        assertEquals(1, f.invalidInputs());
        add(f, acc, 7, null);
        assertEquals(1, decode(f.getValue(acc)).size());
        f.resetAccumulator(acc);
        assertNull(f.getValue(acc));
    }
}
