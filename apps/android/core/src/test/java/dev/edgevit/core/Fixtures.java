package dev.edgevit.core;

import java.awt.image.BufferedImage;
import java.awt.image.Raster;
import java.io.ByteArrayOutputStream;
import java.io.IOException;
import java.io.InputStream;
import java.nio.ByteBuffer;
import java.nio.ByteOrder;
import java.nio.charset.StandardCharsets;
import java.security.MessageDigest;
import java.security.NoSuchAlgorithmException;
import java.util.List;
import java.util.Map;
import java.util.zip.GZIPInputStream;
import javax.imageio.ImageIO;

/** Test helpers: fixtures on the classpath under {@code /golden/}, written by tools/make_golden.py. */
final class Fixtures {
    private Fixtures() {}

    /** An image decoded by javax.imageio, as ARGB pixels (what Android's Bitmap.getPixels gives). */
    static final class Argb {
        final int width;
        final int height;
        final int[] pixels;

        Argb(int width, int height, int[] pixels) {
            this.width = width;
            this.height = height;
            this.pixels = pixels;
        }
    }

    static byte[] bytes(String name) throws IOException {
        try (InputStream in = Fixtures.class.getResourceAsStream("/golden/" + name)) {
            if (in == null) {
                throw new IOException("fixture golden/" + name + " is not on the classpath; "
                        + "run apps/android/core/tools/make_golden.py");
            }
            byte[] data = in.readAllBytes();
            return name.endsWith(".gz") ? gunzip(data) : data;
        }
    }

    static String text(String name) throws IOException {
        return new String(bytes(name), StandardCharsets.UTF_8);
    }

    @SuppressWarnings("unchecked")
    static Map<String, Object> manifest() throws IOException {
        return Json.parseObject(text("golden.json"));
    }

    @SuppressWarnings("unchecked")
    static List<Map<String, Object>> list(Map<String, Object> obj, String key) {
        return (List<Map<String, Object>>) obj.get(key);
    }

    static byte[] gunzip(byte[] data) throws IOException {
        try (GZIPInputStream in = new GZIPInputStream(new java.io.ByteArrayInputStream(data));
                ByteArrayOutputStream out = new ByteArrayOutputStream()) {
            in.transferTo(out);
            return out.toByteArray();
        }
    }

    static float[] littleEndianFloats(byte[] raw) {
        float[] out = new float[raw.length / 4];
        ByteBuffer.wrap(raw).order(ByteOrder.LITTLE_ENDIAN).asFloatBuffer().get(out);
        return out;
    }

    /**
     * Decode a PNG. Gray images are read from the raster: {@code BufferedImage.getRGB} would
     * convert linear gray to sRGB and change the values.
     */
    static Argb image(String name) throws IOException {
        BufferedImage img = ImageIO.read(new java.io.ByteArrayInputStream(bytes(name)));
        if (img == null) {
            throw new IOException(name + " is not an image javax.imageio can decode");
        }
        int w = img.getWidth();
        int h = img.getHeight();
        int[] argb = new int[w * h];
        Raster raster = img.getRaster();
        int bands = raster.getNumBands();
        if (bands <= 2 && raster.getSampleModel().getSampleSize(0) == 8) {
            for (int y = 0; y < h; y++) {
                for (int x = 0; x < w; x++) {
                    int v = raster.getSample(x, y, 0);
                    int a = bands == 2 ? raster.getSample(x, y, 1) : 255;
                    argb[y * w + x] = (a << 24) | (v << 16) | (v << 8) | v;
                }
            }
        } else {
            img.getRGB(0, 0, w, h, argb, 0, w);
        }
        return new Argb(w, h, argb);
    }

    static String sha256(byte[] data) {
        try {
            StringBuilder sb = new StringBuilder();
            for (byte b : MessageDigest.getInstance("SHA-256").digest(data)) {
                sb.append(String.format("%02x", b & 0xFF));
            }
            return sb.toString();
        } catch (NoSuchAlgorithmException e) {
            throw new AssertionError(e);
        }
    }
}
