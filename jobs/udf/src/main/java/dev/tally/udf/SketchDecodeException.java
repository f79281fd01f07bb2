package dev.tally.udf;

/**
 * Thrown by {@link DDSketch#fromBytes(byte[])} when the input is not a valid encoded sketch;
 * the Java twin of Python's {@code tally.sketch.SketchDecodeError} (a ValueError there).
 */
public final class SketchDecodeException extends IllegalArgumentException {
    private static final long serialVersionUID = 1L;

    public SketchDecodeException(String message) {
        super(message);
    }
}
