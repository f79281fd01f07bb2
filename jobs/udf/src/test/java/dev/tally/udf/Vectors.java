package dev.tally.udf;

import java.io.IOException;
import java.io.UncheckedIOException;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.ArrayList;
import java.util.HexFormat;
import java.util.List;
import java.util.Map;

/**
 * The shared test vectors, tests/vectors/sketch_vectors.json, written by Python's
 * tests/vectors/make_sketch_vectors.py. The pom passes the path as system property
 * {@code tally.vectors}; without it (an IDE run) the path is resolved from the module dir.
 */
final class Vectors {
    static final HexFormat HEX = HexFormat.of();
    private static Map<String, Object> root;

    private Vectors() {}

    static synchronized Map<String, Object> root() {
        if (root == null) {
            String configured = System.getProperty("tally.vectors");
            Path path = configured != null ? Path.of(configured)
                    : Path.of("..", "..", "tests", "vectors", "sketch_vectors.json");
            try {
                root = map(Json.parse(Files.readString(path, StandardCharsets.UTF_8)));
            } catch (IOException e) {
                throw new UncheckedIOException("cannot read test vectors " + path.toAbsolutePath(), e);
            }
        }
        return root;
    }

    static List<Map<String, Object>> section(String name) {
        List<Map<String, Object>> out = new ArrayList<>();
        for (Object item : list(root().get(name))) {
            out.add(map(item));
        }
        return out;
    }

    /** One case: its sketches built by adds, in the order Python added them. */
    static List<DDSketch> buildInputs(Map<String, Object> c) {
        double alpha = (Double) c.get("alpha");
        List<Object> caps = list(c.get("max_buckets"));
        List<Object> sketches = list(c.get("sketches"));
        List<DDSketch> out = new ArrayList<>();
        for (int i = 0; i < sketches.size(); i++) {
            DDSketch sketch = new DDSketch(alpha, ((Double) caps.get(i)).longValue());
            for (Object add : list(sketches.get(i))) {
                if (add instanceof List) {
                    List<Object> pair = list(add);
                    sketch.add(number(pair.get(0)), number(pair.get(1)));
                } else {
                    sketch.add(number(add));
                }
            }
            out.add(sketch);
        }
        return out;
    }

    /** A JSON number, or one of the strings "NaN", "Infinity", "-Infinity". */
    static double number(Object o) {
        return o instanceof String ? Double.parseDouble((String) o) : (Double) o;
    }

    static byte[] hex(Object o) {
        return HEX.parseHex((String) o);
    }

    @SuppressWarnings("unchecked")
    static Map<String, Object> map(Object o) {
        return (Map<String, Object>) o;
    }

    @SuppressWarnings("unchecked")
    static List<Object> list(Object o) {
        return (List<Object>) o;
    }
}
