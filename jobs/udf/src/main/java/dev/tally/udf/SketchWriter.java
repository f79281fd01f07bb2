package dev.tally.udf;

import java.util.Arrays;

/** Growable little-endian byte buffer with LEB128 varints. */
final class SketchWriter {
    private byte[] buf;
    private int len;

    SketchWriter(int capacity) {
        buf = new byte[capacity];
    }

    void u8(int b) {
        if (len == buf.length) {
            buf = Arrays.copyOf(buf, 2 * buf.length);
        }
        buf[len++] = (byte) b;
    }

    void f64(double value) {
        long bits = Double.doubleToRawLongBits(value);
        for (int i = 0; i < 8; i++) {
            u8((int) (bits >>> (8 * i)) & 0xFF);
        }
    }

    void uvarint(long n) { // n >= 0
        while (n >= 0x80) {
            u8((int) (n & 0x7F) | 0x80);
            n >>>= 7;
        }
        u8((int) n);
    }

    void count(double weight, boolean floatCounts) {
        if (floatCounts) {
            f64(weight);
        } else {
            uvarint((long) weight);
        }
    }

    byte[] toByteArray() {
        return Arrays.copyOf(buf, len);
    }
}
