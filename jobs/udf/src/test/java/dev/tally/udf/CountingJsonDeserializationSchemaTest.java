package dev.tally.udf;

import static org.junit.jupiter.api.Assertions.assertEquals;

import java.nio.charset.StandardCharsets;
import java.util.ArrayList;
import java.util.List;

import org.apache.flink.api.common.serialization.DeserializationSchema;
import org.apache.flink.api.common.typeinfo.TypeInformation;
import org.apache.flink.table.data.GenericRowData;
import org.apache.flink.table.data.RowData;
import org.apache.flink.util.Collector;
import org.junit.jupiter.api.Test;

class CountingJsonDeserializationSchemaTest {
    /** Stands for Flink's JSON deserializer with ignore-parse-errors: a row per object, nothing otherwise. */
    private static final class ObjectsOnly implements DeserializationSchema<RowData> {
        @Override
        public RowData deserialize(byte[] message) {
            throw new UnsupportedOperationException("the JSON parser schema only collects");
        }

        @Override
        public void deserialize(byte[] message, Collector<RowData> out) {
            if (new String(message, StandardCharsets.UTF_8).startsWith("{")) {
                out.collect(GenericRowData.of(message.length));
            }
        }

        @Override
        public boolean isEndOfStream(RowData nextElement) {
            return false;
        }

        @Override
        public TypeInformation<RowData> getProducedType() {
            return null;
        }
    }

    private static List<RowData> feed(CountingJsonDeserializationSchema schema, byte[]... messages) throws Exception {
        List<RowData> rows = new ArrayList<>();
        Collector<RowData> out = new Collector<>() {
            @Override
            public void collect(RowData row) {
                rows.add(row);
            }

            @Override
            public void close() {}
        };
        for (byte[] m : messages) {
            schema.deserialize(m, out);
        }
        return rows;
    }

    @Test
    void countsRecordsThatYieldNoRowAndKeepsTheOthers() throws Exception {
        CountingJsonDeserializationSchema schema = new CountingJsonDeserializationSchema(new ObjectsOnly());
        List<RowData> rows = feed(schema, "{\"a\":1}".getBytes(StandardCharsets.UTF_8),
                "not json".getBytes(StandardCharsets.UTF_8), new byte[] {0, -1},
                "{\"b\":2}".getBytes(StandardCharsets.UTF_8));
        assertEquals(2, rows.size());
        assertEquals(2, schema.unparseable());
    }

    @Test
    void aTombstoneIsNeitherARowNorCounted() throws Exception {
        CountingJsonDeserializationSchema schema = new CountingJsonDeserializationSchema(new ObjectsOnly());
        assertEquals(0, feed(schema, (byte[]) null).size());
        assertEquals(0, schema.unparseable());
    }

    @Test
    void singleRecordDeserializeGoesThroughTheCollectorPath() throws Exception {
        CountingJsonDeserializationSchema schema = new CountingJsonDeserializationSchema(new ObjectsOnly());
        assertEquals(7, schema.deserialize("{\"a\":1}".getBytes(StandardCharsets.UTF_8)).getInt(0));
        assertEquals(null, schema.deserialize("nope".getBytes(StandardCharsets.UTF_8)));
        assertEquals(1, schema.unparseable());
    }
}
