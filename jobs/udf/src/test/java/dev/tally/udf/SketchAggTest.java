package dev.tally.udf;

import static org.junit.jupiter.api.Assertions.assertArrayEquals;
import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertNotSame;
import static org.junit.jupiter.api.Assertions.assertNull;
import static org.junit.jupiter.api.Assertions.assertThrows;

import java.io.IOException;
import java.util.ArrayList;
import java.util.List;
import java.util.Random;

import org.apache.flink.core.memory.DataInputDeserializer;
import org.apache.flink.core.memory.DataOutputSerializer;
import org.junit.jupiter.api.RepeatedTest;
import org.junit.jupiter.api.Test;

class SketchAggTest {
    private static final Random SEED = new Random(5);

    private static List<byte[]> randomInputs(Random rng, int n) {
        SketchOf of = new SketchOf();
        List<byte[]> inputs = new ArrayList<>();
        for (int i = 0; i < n; i++) {
            if (rng.nextInt(10) == 0) {
                inputs.add(null);
            } else if (rng.nextInt(5) == 0) { // a multi-value sketch, as from a previous tier
                DDSketch sketch = new DDSketch();
                for (int j = rng.nextInt(30); j > 0; j--) {
                    sketch.add(rng.nextGaussian() * 100, 1 + rng.nextInt(5));
                }
                inputs.add(sketch.toBytes());
            } else {
                inputs.add(of.eval(Math.exp(rng.nextGaussian() * 4), (double) (1 + rng.nextInt(10))));
            }
        }
        return inputs;
    }

    private static byte[] sequential(List<byte[]> inputs) {
        SketchAgg agg = new SketchAgg();
        SketchAgg.Acc acc = agg.createAccumulator();
        for (byte[] input : inputs) {
            agg.accumulate(acc, input);
        }
        return agg.getValue(acc);
    }

    @RepeatedTest(20)
    void mergeOfPartialsEqualsSequentialAccumulate() {
        Random rng = new Random(SEED.nextLong());
        List<byte[]> inputs = randomInputs(rng, rng.nextInt(400));
        SketchAgg agg = new SketchAgg();
        List<SketchAgg.Acc> partials = new ArrayList<>();
        for (int i = 1 + rng.nextInt(5); i > 0; i--) {
            partials.add(agg.createAccumulator());
        }
        for (byte[] input : inputs) { // like local aggregation on several subtasks
            agg.accumulate(partials.get(rng.nextInt(partials.size())), input);
        }
        SketchAgg.Acc global = agg.createAccumulator();
        agg.merge(global, partials.subList(0, 1));
        agg.merge(global, partials.subList(1, partials.size()));
        assertArrayEquals(sequential(inputs), agg.getValue(global));
    }

    @Test
    void nullsAreIgnoredAndNothingGivesNull() {
        SketchAgg agg = new SketchAgg();
        SketchAgg.Acc acc = agg.createAccumulator();
        assertNull(agg.getValue(acc));
        agg.accumulate(acc, null);
        assertNull(agg.getValue(acc));
        agg.merge(acc, List.of(agg.createAccumulator()));
        assertNull(agg.getValue(acc));
        byte[] empty = new DDSketch().toBytes();
        agg.accumulate(acc, empty); // an empty sketch is a value, not nothing
        assertArrayEquals(empty, agg.getValue(acc));
    }

    @Test
    void resetAccumulatorForgetsEverything() {
        SketchAgg agg = new SketchAgg();
        SketchAgg.Acc acc = agg.createAccumulator();
        agg.accumulate(acc, new SketchOf().eval(3.0, 1.0));
        agg.resetAccumulator(acc);
        assertNull(agg.getValue(acc));
        agg.accumulate(acc, new SketchOf().eval(4.0, 1.0));
        assertArrayEquals(new SketchOf().eval(4.0, 1.0), agg.getValue(acc));
    }

    @Test
    void invalidInputsAreSkippedAndCounted() {
        SketchAgg agg = new SketchAgg();
        SketchAgg.Acc acc = agg.createAccumulator();
        agg.accumulate(acc, new byte[] {1, 2, 3});
        agg.accumulate(acc, new SketchOf().eval(3.0, 1.0));
        agg.accumulate(acc, new byte[] {9});
        agg.accumulate(acc, new DDSketch(0.02, 2048).add(5.0).toBytes()); // other alpha
        agg.accumulate(acc, new SketchOf().eval(4.0, 1.0));
        assertEquals(3, agg.invalidInputs());
        assertArrayEquals(new DDSketch().add(3.0).add(4.0).toBytes(), agg.getValue(acc));
    }

    @Test
    void mergeDoesNotAliasTheOtherAccumulator() {
        SketchAgg agg = new SketchAgg();
        SketchAgg.Acc other = agg.createAccumulator();
        agg.accumulate(other, new SketchOf().eval(3.0, 1.0));
        SketchAgg.Acc acc = agg.createAccumulator();
        agg.merge(acc, List.of(other));
        agg.accumulate(other, new SketchOf().eval(30.0, 1.0));
        assertArrayEquals(new SketchOf().eval(3.0, 1.0), agg.getValue(acc));
    }

    @Test
    void serializerRoundTripsAndCopies() throws IOException {
        SketchAgg agg = new SketchAgg();
        SketchAgg.AccSerializer serializer = new SketchAgg.AccSerializer();
        SketchAgg.Acc acc = agg.createAccumulator();
        for (byte[] input : randomInputs(new Random(1), 200)) {
            agg.accumulate(acc, input);
        }
        for (SketchAgg.Acc original : List.of(acc, agg.createAccumulator())) {
            DataOutputSerializer out = new DataOutputSerializer(64);
            serializer.serialize(original, out);
            SketchAgg.Acc restored = serializer.deserialize(new DataInputDeserializer(out.getCopyOfBuffer()));
            assertArrayEquals(agg.getValue(original), agg.getValue(restored));

            DataOutputSerializer copied = new DataOutputSerializer(64);
            serializer.copy(new DataInputDeserializer(out.getCopyOfBuffer()), copied);
            assertArrayEquals(out.getCopyOfBuffer(), copied.getCopyOfBuffer());

            SketchAgg.Acc copy = serializer.copy(original);
            assertArrayEquals(agg.getValue(original), agg.getValue(copy));
            if (original.sketch() != null) {
                assertNotSame(original.sketch(), copy.sketch());
            }
        }
        assertEquals(serializer, serializer.snapshotConfiguration().restoreSerializer());
        DataOutputSerializer corrupt = new DataOutputSerializer(8);
        corrupt.writeInt(2);
        corrupt.write(new byte[] {7, 7});
        assertThrows(IOException.class,
                () -> serializer.deserialize(new DataInputDeserializer(corrupt.getCopyOfBuffer())));
    }
}
