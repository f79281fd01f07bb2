package dev.tally.udf;

import static dev.tally.udf.Vectors.HEX;
import static dev.tally.udf.Vectors.hex;
import static dev.tally.udf.Vectors.list;
import static org.junit.jupiter.api.Assertions.assertArrayEquals;
import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertNull;
import static org.junit.jupiter.api.Assertions.assertThrows;
import static org.junit.jupiter.api.Assertions.assertTrue;
import static org.junit.jupiter.api.DynamicTest.dynamicTest;

import java.util.ArrayList;
import java.util.List;
import java.util.Map;
import java.util.stream.Stream;

import org.junit.jupiter.api.DynamicTest;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.TestFactory;

/** Byte-for-byte agreement with Python's tally.sketch, through the shared vectors. */
class SketchVectorsTest {

    /** Java's exp may round differently from glibc's in the last bit (see DDSketch). */
    static final double QUANTILE_MAX_ULPS = 1;

    @Test
    void vectorsCoverWhatTheyShould() {
        List<Map<String, Object>> cases = Vectors.section("cases");
        assertTrue(cases.size() >= 30, "expected ~30 cases, got " + cases.size());
        boolean collapsedDefault = false;
        for (Map<String, Object> c : cases) {
            DDSketch sketch = DDSketch.fromBytes(hex(c.get("hex")));
            collapsedDefault |= sketch.maxBuckets() == 2048 && sketch.bucketCount() == 2048;
        }
        assertTrue(collapsedDefault, "no case reaches the 2048-bucket cap");
    }

    @TestFactory
    Stream<DynamicTest> encodingMatchesPython() {
        return Vectors.section("cases").stream().map(c -> dynamicTest(name(c), () -> {
            List<DDSketch> inputs = Vectors.buildInputs(c);
            List<Object> inputsHex = list(c.get("inputs_hex"));
            for (int i = 0; i < inputs.size(); i++) {
                assertEquals(inputsHex.get(i), HEX.formatHex(inputs.get(i).toBytes()), "input sketch " + i);
            }
            DDSketch merged = inputs.get(0).copy();
            for (DDSketch other : inputs.subList(1, inputs.size())) {
                merged.merge(other);
            }
            assertEquals(c.get("hex"), HEX.formatHex(merged.toBytes()));
        }));
    }

    @TestFactory
    Stream<DynamicTest> decodingRoundTrips() {
        return Vectors.section("cases").stream().map(c -> dynamicTest(name(c), () -> {
            byte[] encoded = hex(c.get("hex"));
            DDSketch decoded = DDSketch.fromBytes(encoded);
            assertArrayEquals(encoded, decoded.toBytes());
            assertArrayEquals(encoded, decoded.copy().toBytes());
            List<DDSketch> inputs = Vectors.buildInputs(c);
            DDSketch built = inputs.get(0);
            for (DDSketch other : inputs.subList(1, inputs.size())) {
                built.merge(other);
            }
            assertEquals(built, decoded);
            assertEquals(built.hashCode(), decoded.hashCode());
        }));
    }

    @TestFactory
    Stream<DynamicTest> countAndQuantilesMatchPython() {
        return Vectors.section("cases").stream().map(c -> dynamicTest(name(c), () -> {
            DDSketch sketch = DDSketch.fromBytes(hex(c.get("hex")));
            assertEquals((double) (Double) c.get("count"), sketch.count(), 0.0, "count (fsum) must be exact");
            for (Object item : list(c.get("quantiles"))) {
                List<Object> pair = list(item);
                double q = (Double) pair.get(0);
                Double expected = (Double) pair.get(1);
                Double got = sketch.quantile(q);
                if (expected == null) {
                    assertNull(got, "q=" + q);
                } else {
                    assertEquals(expected, got, QUANTILE_MAX_ULPS * Math.ulp(expected), "q=" + q);
                }
            }
        }));
    }

    @TestFactory
    Stream<DynamicTest> sketchAggMatchesPythonMerge() {
        return Vectors.section("cases").stream().map(c -> dynamicTest(name(c), () -> {
            SketchAgg agg = new SketchAgg();
            SketchAgg.Acc acc = agg.createAccumulator();
            for (Object input : list(c.get("inputs_hex"))) {
                agg.accumulate(acc, hex(input));
            }
            assertEquals(c.get("hex"), HEX.formatHex(agg.getValue(acc)));
            assertEquals(0, agg.invalidInputs());
        }));
    }

    @TestFactory
    Stream<DynamicTest> addRejectsWhatPythonRejects() {
        return Vectors.list(Vectors.root().get("add_errors")).stream().map(item -> {
            List<Object> pair = list(item);
            double value = Vectors.number(pair.get(0));
            double count = Vectors.number(pair.get(1));
            return dynamicTest("add(" + value + ", " + count + ")", () -> {
                DDSketch sketch = new DDSketch().add(1.0);
                byte[] before = sketch.toBytes();
                assertThrows(IllegalArgumentException.class, () -> sketch.add(value, count));
                assertArrayEquals(before, sketch.toBytes(), "a rejected add must not change the sketch");
            });
        });
    }

    @TestFactory
    Stream<DynamicTest> decodeRejectsWhatPythonRejects() {
        return Vectors.section("decode_errors").stream().map(c -> dynamicTest(name(c), () ->
                assertThrows(SketchDecodeException.class, () -> DDSketch.fromBytes(hex(c.get("hex"))))));
    }

    @TestFactory
    Stream<DynamicTest> decodeCanonicalisesLikePython() {
        return Vectors.section("decode_non_canonical").stream().map(c -> dynamicTest(name(c), () -> {
            DDSketch sketch = DDSketch.fromBytes(hex(c.get("hex")));
            assertEquals(c.get("canonical_hex"), HEX.formatHex(sketch.toBytes()));
            assertEquals((double) (Double) c.get("count"), sketch.count(), 0.0);
        }));
    }

    @TestFactory
    Stream<DynamicTest> sketchOfMatchesSingleValueCases() {
        List<DynamicTest> tests = new ArrayList<>();
        for (Map<String, Object> c : Vectors.section("cases")) {
            List<Object> sketches = list(c.get("sketches"));
            List<Object> adds = list(sketches.get(0));
            if (sketches.size() != 1 || adds.size() != 1 || (Double) c.get("alpha") != 0.01
                    || (Double) list(c.get("max_buckets")).get(0) != 2048) {
                continue;
            }
            tests.add(dynamicTest(name(c), () -> {
                Object add = adds.get(0);
                List<Object> pair = add instanceof List ? list(add) : List.of(add, 1.0);
                byte[] got = new SketchOf().eval(Vectors.number(pair.get(0)), Vectors.number(pair.get(1)));
                assertEquals(c.get("hex"), HEX.formatHex(got));
            }));
        }
        assertTrue(tests.size() >= 6, "too few single-value cases: " + tests.size());
        return tests.stream();
    }

    private static String name(Map<String, Object> c) {
        return (String) c.get("name");
    }
}
