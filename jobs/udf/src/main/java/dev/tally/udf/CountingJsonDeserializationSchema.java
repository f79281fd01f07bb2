package dev.tally.udf;

import java.io.IOException;

import org.apache.flink.api.common.serialization.DeserializationSchema;
import org.apache.flink.api.common.typeinfo.TypeInformation;
import org.apache.flink.metrics.Counter;
import org.apache.flink.metrics.SimpleCounter;
import org.apache.flink.table.data.RowData;
import org.apache.flink.util.Collector;
import org.slf4j.Logger;
import org.slf4j.LoggerFactory;

/**
 * A JSON deserializer (built with ignore-parse-errors) whose records that yield no row are
 * counted: a non-empty Kafka value that produced nothing was not a JSON object. Tombstones
 * (a null value) are not counted.
 */
final class CountingJsonDeserializationSchema implements DeserializationSchema<RowData> {
    private static final long serialVersionUID = 1L;
    private static final Logger LOG = LoggerFactory.getLogger(CountingJsonDeserializationSchema.class);

    /** Source metric: records skipped because they were not JSON. */
    static final String METRIC = "tallyUnparseableRecords";

    private final DeserializationSchema<RowData> inner;
    private transient Counter unparseable;

    CountingJsonDeserializationSchema(DeserializationSchema<RowData> inner) {
        this.inner = inner;
    }

    @Override
    public void open(InitializationContext context) throws Exception {
        inner.open(context);
        unparseable = context.getMetricGroup().counter(METRIC);
    }

    @Override
    public RowData deserialize(byte[] message) throws IOException {
        RowData[] one = new RowData[1];
        deserialize(message, new Collector<RowData>() {
            @Override
            public void collect(RowData row) {
                one[0] = row;
            }

            @Override
            public void close() {}
        });
        return one[0];
    }

    @Override
    public void deserialize(byte[] message, Collector<RowData> out) throws IOException {
        if (message == null) {
            return; // a tombstone
        }
        int[] emitted = {0};
        inner.deserialize(message, new Collector<RowData>() {
            @Override
            public void collect(RowData row) {
                emitted[0]++;
                out.collect(row);
            }

            @Override
            public void close() {
                out.close();
            }
        });
        if (emitted[0] == 0) {
            record(message);
        }
    }

    private void record(byte[] message) {
        if (unparseable == null) { // not opened: unit tests
            unparseable = new SimpleCounter();
        }
        if (unparseable.getCount() == 0) {
            int n = Math.min(message.length, 120);
            LOG.warn("skipping a record that is not a JSON object ({} bytes, starts {}); further ones are only "
                    + "counted in metric {}", message.length,
                    new String(message, 0, n, java.nio.charset.StandardCharsets.UTF_8), METRIC);
        }
        unparseable.inc();
    }

    /** Records skipped since open (for tests). */
    long unparseable() {
        return unparseable == null ? 0 : unparseable.getCount();
    }

    @Override
    public boolean isEndOfStream(RowData nextElement) {
        return inner.isEndOfStream(nextElement);
    }

    @Override
    public TypeInformation<RowData> getProducedType() {
        return inner.getProducedType();
    }
}
