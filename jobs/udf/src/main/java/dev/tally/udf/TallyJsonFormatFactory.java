package dev.tally.udf;

import java.util.Collections;
import java.util.Set;

import org.apache.flink.api.common.serialization.DeserializationSchema;
import org.apache.flink.configuration.ConfigOption;
import org.apache.flink.configuration.Configuration;
import org.apache.flink.configuration.ReadableConfig;
import org.apache.flink.formats.json.JsonFormatFactory;
import org.apache.flink.formats.json.JsonFormatOptions;
import org.apache.flink.table.connector.ChangelogMode;
import org.apache.flink.table.connector.format.DecodingFormat;
import org.apache.flink.table.connector.format.ProjectableDecodingFormat;
import org.apache.flink.table.connector.source.DynamicTableSource;
import org.apache.flink.table.data.RowData;
import org.apache.flink.table.factories.DeserializationFormatFactory;
import org.apache.flink.table.factories.DynamicTableFactory;
import org.apache.flink.table.types.DataType;

/**
 * Format {@code tally-json}: Flink's JSON format that never fails the job on a record it
 * cannot parse and never skips one silently. A field of the wrong type becomes NULL (the job
 * rejects the record with a reason, per tenant); bytes that are not a JSON object at all
 * produce no row and are counted in the source's metric {@value
 * CountingJsonDeserializationSchema#METRIC} (the data-quality API reads it from Flink's REST
 * API), the first one logged.
 *
 * <p>Option: {@code tally-json.fail-on-missing-field} (default false), as in {@code json}.
 */
public final class TallyJsonFormatFactory implements DeserializationFormatFactory {
    public static final String IDENTIFIER = "tally-json";

    @Override
    public String factoryIdentifier() {
        return IDENTIFIER;
    }

    @Override
    public Set<ConfigOption<?>> requiredOptions() {
        return Collections.emptySet();
    }

    @Override
    public Set<ConfigOption<?>> optionalOptions() {
        return Set.of(JsonFormatOptions.FAIL_ON_MISSING_FIELD);
    }

    @Override
    public DecodingFormat<DeserializationSchema<RowData>> createDecodingFormat(
            DynamicTableFactory.Context context, ReadableConfig formatOptions) {
        Configuration json = new Configuration();
        json.set(JsonFormatOptions.FAIL_ON_MISSING_FIELD, formatOptions.get(JsonFormatOptions.FAIL_ON_MISSING_FIELD));
        json.set(JsonFormatOptions.IGNORE_PARSE_ERRORS, true); // a bad record yields no row: counted below
        DecodingFormat<DeserializationSchema<RowData>> inner =
                new JsonFormatFactory().createDecodingFormat(context, json);
        return new Counting((ProjectableDecodingFormat<DeserializationSchema<RowData>>) inner);
    }

    /** The JSON decoding format with every runtime decoder wrapped in the counting one. */
    private static final class Counting implements ProjectableDecodingFormat<DeserializationSchema<RowData>> {
        private final ProjectableDecodingFormat<DeserializationSchema<RowData>> inner;

        Counting(ProjectableDecodingFormat<DeserializationSchema<RowData>> inner) {
            this.inner = inner;
        }

        @Override
        public DeserializationSchema<RowData> createRuntimeDecoder(
                DynamicTableSource.Context context, DataType physicalDataType, int[][] projections) {
            return new CountingJsonDeserializationSchema(
                    inner.createRuntimeDecoder(context, physicalDataType, projections));
        }

        @Override
        public boolean supportsNestedProjection() {
            return inner.supportsNestedProjection();
        }

        @Override
        public ChangelogMode getChangelogMode() {
            return inner.getChangelogMode();
        }
    }
}
