package dev.tally.udf;

import static org.junit.jupiter.api.Assertions.assertArrayEquals;
import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertNull;

import org.junit.jupiter.api.Test;

class ScalarFunctionsTest {
    @Test
    void sketchOfEncodesOneWeightedValue() {
        SketchOf f = new SketchOf();
        assertArrayEquals(new DDSketch().add(12.5, 10).toBytes(), f.eval(12.5, 10.0));
        assertArrayEquals(new DDSketch().add(-3).toBytes(), f.eval(-3.0));
        assertArrayEquals(new DDSketch().toBytes(), f.eval(1.0, 0.0)); // weight 0: empty sketch
        assertArrayEquals(f.eval(7.0, 1.0), f.eval(7.0)); // reused scratch sketch leaks nothing
    }

    @Test
    void sketchOfNullsAndInvalidInputs() {
        SketchOf f = new SketchOf();
        assertNull(f.eval(null, 1.0));
        assertNull(f.eval(1.0, null));
        assertNull(f.eval((Double) null));
        assertEquals(0, f.invalidInputs());
        assertNull(f.eval(Double.NaN, 1.0));
        assertNull(f.eval(2e300, 1.0));
        assertNull(f.eval(1.0, -1.0));
        assertNull(f.eval(1.0, Double.POSITIVE_INFINITY));
        assertEquals(4, f.invalidInputs());
    }

    @Test
    void sketchQuantileAnswersLikeTheSketch() {
        DDSketch sketch = new DDSketch();
        for (int i = 1; i <= 1000; i++) {
            sketch.add(i);
        }
        SketchQuantile f = new SketchQuantile();
        for (double q : new double[] {0, 0.5, 0.99, 1}) {
            assertEquals(sketch.quantile(q), f.eval(sketch.toBytes(), q));
        }
        assertNull(f.eval(new DDSketch().toBytes(), 0.5)); // empty sketch
        assertNull(f.eval(null, 0.5));
        assertNull(f.eval(sketch.toBytes(), null));
        assertEquals(0, f.invalidInputs());
        assertNull(f.eval(sketch.toBytes(), 1.5));
        assertNull(f.eval(new byte[] {1}, 0.5));
        assertEquals(2, f.invalidInputs());
    }
}
