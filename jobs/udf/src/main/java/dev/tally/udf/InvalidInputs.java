package dev.tally.udf;

import java.io.Serializable;

import org.apache.flink.metrics.Counter;
import org.apache.flink.metrics.SimpleCounter;
import org.apache.flink.table.functions.FunctionContext;
import org.slf4j.Logger;
import org.slf4j.LoggerFactory;

/**
 * Bad input is data, not a crash: a function that meets an input it cannot use (NaN, an
 * undecodable sketch, an alpha mismatch) skips it, counts it in the operator metric {@link
 * #METRIC} and logs the first one per function instance. Throwing instead would fail the
 * job and restart it into the same record forever.
 */
final class InvalidInputs implements Serializable {
    private static final long serialVersionUID = 1L;
    private static final Logger LOG = LoggerFactory.getLogger(InvalidInputs.class);

    /** Operator metric counting skipped inputs, e.g. {@code ...sketch_agg_invalidInputs}. */
    static final String METRIC = "invalidInputs";

    private final String function;
    private transient Counter counter;

    InvalidInputs(String function) {
        this.function = function;
    }

    /** Registers the counter with the operator's metric group (from the function's open). */
    void open(FunctionContext context) {
        counter = context.getMetricGroup().counter(function + "_" + METRIC);
    }

    /** Counts one skipped input; logs its reason the first time. */
    void record(String reason) {
        if (counter == null) { // not opened: unit tests, planner constant folding
            counter = new SimpleCounter();
        }
        if (counter.getCount() == 0) {
            LOG.warn("{}: skipping invalid input ({}); further ones are only counted in metric {}_{}",
                    function, reason, function, METRIC);
        }
        counter.inc();
    }

    /** How many inputs were skipped since open (for tests). */
    long count() {
        return counter == null ? 0 : counter.getCount();
    }
}
