package dev.tally.udf;

import java.math.BigInteger;

/** Bounds-checked cursor: every read failure becomes a SketchDecodeException. */
final class SketchReader {
    /** What {@link #uvarint} returns for values of 2^63 and more (at most 2^70 - 1). */
    static final long HUGE = -1;

    final byte[] data;
    int pos;

    SketchReader(byte[] data) {
        this.data = data;
    }

    SketchDecodeException truncated(String what) {
        return new SketchDecodeException(
                "truncated input: " + what + " at offset " + pos + " of " + data.length);
    }

    int u8(String what) {
        if (pos >= data.length) {
            throw truncated(what);
        }
        return data[pos++] & 0xFF;
    }

    double f64(String what) {
        if (pos + 8 > data.length) {
            throw truncated(what);
        }
        long bits = 0;
        for (int i = 7; i >= 0; i--) {
            bits = (bits << 8) | (data[pos + i] & 0xFF);
        }
        pos += 8;
        return Double.longBitsToDouble(bits);
    }

    /** An LEB128 uvarint of at most 10 bytes, as Python reads it; HUGE for >= 2^63. */
    long uvarint(String what) {
        long result = 0;
        for (int shift = 0; shift < 63; shift += 7) {
            int b = u8(what);
            result |= (long) (b & 0x7F) << shift;
            if ((b & 0x80) == 0) {
                return result;
            }
        }
        int b = u8(what); // the 10th byte carries bits 63..69
        if ((b & 0x80) != 0) {
            throw new SketchDecodeException("varint too long: " + what + " at offset " + pos);
        }
        return (b & 0x7F) == 0 ? result : HUGE;
    }

    /** A count (float64 or uvarint), rejected unless finite and >= 0, as Python does. */
    double weight(boolean floatCounts, String what) {
        double weight;
        if (floatCounts) {
            weight = f64(what);
        } else {
            int start = pos;
            long n = uvarint(what);
            weight = n >= 0 ? (double) n : hugeVarint(start);
        }
        if (!(weight >= 0.0 && weight < Double.POSITIVE_INFINITY)) {
            throw new SketchDecodeException("invalid count " + weight + " before offset " + pos);
        }
        return weight;
    }

    /** The exact value of the 10-byte varint at {@code start}, correctly rounded like float(int). */
    private double hugeVarint(int start) {
        BigInteger value = BigInteger.ZERO;
        for (int i = 0; i < 10; i++) {
            value = value.or(BigInteger.valueOf(data[start + i] & 0x7F).shiftLeft(7 * i));
        }
        return value.doubleValue();
    }
}
