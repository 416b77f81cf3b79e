package dev.edgevit.core;

import java.util.Locale;

/**
 * Image resizing that reproduces Pillow's {@code Image.resize} on 8-bit images, so a frame
 * preprocessed on the phone matches the Python reference value for value.
 *
 * <p>Pillow resamples with a separable convolution: a horizontal pass into an 8-bit temporary
 * image, then a vertical pass. For each output pixel the filter is centred on the source
 * position {@code (i + 0.5) * scale}; when downscaling, its support is widened by the scale
 * factor (so every source pixel contributes, which is what makes Pillow's downscaling
 * anti-aliased). The normalised weights are rounded to 22-bit fixed point, products are
 * accumulated in integers with a rounding half, and the result is clipped to 0..255. {@code
 * NEAREST} is not a convolution in Pillow but an affine scale that samples at pixel centres.
 */
public final class Resampler {
    private static final int PRECISION_BITS = 32 - 8 - 2;

    private Resampler() {}

    /** The resampling filters of {@code edgevit.preprocess} (Pillow's names, lower case). */
    public enum Filter {
        NEAREST(0.0),
        BILINEAR(1.0),
        BICUBIC(2.0),
        LANCZOS(3.0);

        final double support;

        Filter(double support) {
            this.support = support;
        }

        /** The filter for a metadata {@code interpolation} value such as "bicubic". */
        public static Filter fromName(String name) {
            for (Filter f : values()) {
                if (f.name().toLowerCase(Locale.ROOT).equals(name)) {
                    return f;
                }
            }
            throw new EdgeVitException("metadata interpolation must be one of nearest, bilinear, bicubic, "
                    + "lanczos; got '" + name + "' (re-export the model with a supported interpolation)");
        }

        double weight(double x) {
            switch (this) {
                case BILINEAR:
                    if (x < 0.0) {
                        x = -x;
                    }
                    return x < 1.0 ? 1.0 - x : 0.0;
                case BICUBIC: {
                    final double a = -0.5;
                    if (x < 0.0) {
                        x = -x;
                    }
                    if (x < 1.0) {
                        return ((a + 2.0) * x - (a + 3.0)) * x * x + 1;
                    }
                    if (x < 2.0) {
                        return (((x - 5) * x + 8) * x - 4) * a;
                    }
                    return 0.0;
                }
                case LANCZOS:
                    return -3.0 <= x && x < 3.0 ? sinc(x) * sinc(x / 3) : 0.0;
                default:
                    throw new IllegalStateException("no convolution weights for " + this);
            }
        }

        private static double sinc(double x) {
            if (x == 0.0) {
                return 1.0;
            }
            x = x * Math.PI;
            return Math.sin(x) / x;
        }
    }

    /** Fixed-point convolution weights for one axis: window start/length and weights per output. */
    static final class Coefficients {
        final int ksize;
        final int[] start;
        final int[] count;
        final int[] weights; // outSize * ksize, fixed point

        Coefficients(int ksize, int outSize) {
            this.ksize = ksize;
            this.start = new int[outSize];
            this.count = new int[outSize];
            this.weights = new int[outSize * ksize];
        }
    }

    static Coefficients coefficients(int inSize, int outSize, Filter filter) {
        double scale = (double) inSize / outSize;
        double filterscale = scale < 1.0 ? 1.0 : scale;
        double support = filter.support * filterscale;
        int ksize = (int) Math.ceil(support) * 2 + 1;
        Coefficients c = new Coefficients(ksize, outSize);
        double[] k = new double[ksize];
        double ss = 1.0 / filterscale;
        for (int xx = 0; xx < outSize; xx++) {
            double center = (xx + 0.5) * scale;
            int xmin = (int) (center - support + 0.5);
            if (xmin < 0) {
                xmin = 0;
            }
            int xmax = (int) (center + support + 0.5);
            if (xmax > inSize) {
                xmax = inSize;
            }
            xmax -= xmin;
            double ww = 0.0;
            for (int x = 0; x < xmax; x++) {
                double w = filter.weight((x + xmin - center + 0.5) * ss);
                k[x] = w;
                ww += w;
            }
            int base = xx * ksize;
            for (int x = 0; x < xmax; x++) {
                double w = ww != 0.0 ? k[x] / ww : k[x];
                c.weights[base + x] = w < 0 ? (int) (-0.5 + w * (1 << PRECISION_BITS))
                        : (int) (0.5 + w * (1 << PRECISION_BITS));
            }
            c.start[xx] = xmin;
            c.count[xx] = xmax;
        }
        return c;
    }

    private static int clip8(int acc) {
        int v = acc >> PRECISION_BITS;
        return v < 0 ? 0 : (v > 255 ? 255 : v);
    }

    /**
     * Resize an interleaved 8-bit image ({@code height x width x channels}, row-major) to {@code
     * outWidth x outHeight} as Pillow's {@code Image.resize(size, filter)} does.
     */
    public static byte[] resize(byte[] src, int width, int height, int channels, int outWidth, int outHeight,
            Filter filter) {
        if (width <= 0 || height <= 0 || outWidth <= 0 || outHeight <= 0) {
            throw new IllegalArgumentException("image sizes must be positive: " + width + "x" + height + " -> "
                    + outWidth + "x" + outHeight);
        }
        if (src.length != width * height * channels) {
            throw new IllegalArgumentException("pixel buffer holds " + src.length + " bytes, expected "
                    + width * height * channels);
        }
        if (width == outWidth && height == outHeight) {
            return src.clone();
        }
        if (filter == Filter.NEAREST) {
            return nearest(src, width, height, channels, outWidth, outHeight);
        }
        Coefficients vert = coefficients(height, outHeight, filter);
        byte[] img = src;
        int rowsFirst = 0;
        if (outWidth != width) {
            // Only the source rows that the vertical pass reads are resampled horizontally.
            rowsFirst = vert.start[0];
            int rowsLast = vert.start[outHeight - 1] + vert.count[outHeight - 1];
            img = horizontal(src, width, channels, rowsFirst, rowsLast - rowsFirst, outWidth,
                    coefficients(width, outWidth, filter));
        }
        if (outHeight == height) {
            return img;
        }
        return vertical(img, outWidth, channels, rowsFirst, outHeight, vert);
    }

    private static byte[] horizontal(byte[] src, int width, int channels, int rowOffset, int rows, int outWidth,
            Coefficients c) {
        byte[] out = new byte[rows * outWidth * channels];
        int half = 1 << (PRECISION_BITS - 1);
        for (int y = 0; y < rows; y++) {
            int inRow = (y + rowOffset) * width * channels;
            int outRow = y * outWidth * channels;
            for (int xx = 0; xx < outWidth; xx++) {
                int base = xx * c.ksize;
                int xmin = c.start[xx];
                int n = c.count[xx];
                for (int ch = 0; ch < channels; ch++) {
                    int acc = half;
                    int p = inRow + xmin * channels + ch;
                    for (int x = 0; x < n; x++, p += channels) {
                        acc += (src[p] & 0xFF) * c.weights[base + x];
                    }
                    out[outRow + xx * channels + ch] = (byte) clip8(acc);
                }
            }
        }
        return out;
    }

    private static byte[] vertical(byte[] src, int width, int channels, int rowOffset, int outHeight,
            Coefficients c) {
        int stride = width * channels;
        byte[] out = new byte[outHeight * stride];
        int half = 1 << (PRECISION_BITS - 1);
        for (int yy = 0; yy < outHeight; yy++) {
            int base = yy * c.ksize;
            int ymin = c.start[yy] - rowOffset;
            int n = c.count[yy];
            int outRow = yy * stride;
            for (int i = 0; i < stride; i++) {
                int acc = half;
                int p = ymin * stride + i;
                for (int y = 0; y < n; y++, p += stride) {
                    acc += (src[p] & 0xFF) * c.weights[base + y];
                }
                out[outRow + i] = (byte) clip8(acc);
            }
        }
        return out;
    }

    /** Pillow's nearest-neighbour scale: sample at pixel centres, positions accumulated in doubles. */
    private static byte[] nearest(byte[] src, int width, int height, int channels, int outWidth, int outHeight) {
        double ax = (double) width / outWidth;
        double ay = (double) height / outHeight;
        int[] xin = new int[outWidth];
        double xo = ax * 0.5;
        for (int x = 0; x < outWidth; x++) {
            xin[x] = coord(xo, width);
            xo += ax;
        }
        byte[] out = new byte[outWidth * outHeight * channels];
        double yo = ay * 0.5;
        for (int y = 0; y < outHeight; y++) {
            int yi = coord(yo, height);
            yo += ay;
            if (yi < 0) {
                continue; // left black, as Pillow's fill does (cannot happen for a plain resize)
            }
            for (int x = 0; x < outWidth; x++) {
                if (xin[x] >= 0) {
                    System.arraycopy(src, (yi * width + xin[x]) * channels, out, (y * outWidth + x) * channels,
                            channels);
                }
            }
        }
        return out;
    }

    private static int coord(double v, int size) {
        int i = v < 0.0 ? -1 : (int) v;
        return i < size ? i : -1;
    }
}
