package dev.edgevit.core;

import java.nio.ByteBuffer;
import java.nio.ByteOrder;

/**
 * A batch-of-one model input: float32 values (normalised, NCHW or NHWC as the artifact declares)
 * or, for fused-input artifacts, the uint8 NHWC frame itself.
 */
public final class InputTensor {
    private final int[] shape;
    private final float[] floats;
    private final byte[] bytes;

    private InputTensor(int[] shape, float[] floats, byte[] bytes) {
        this.shape = shape.clone();
        this.floats = floats;
        this.bytes = bytes;
    }

    static InputTensor ofFloats(int[] shape, float[] values) {
        return new InputTensor(shape, values, null);
    }

    static InputTensor ofBytes(int[] shape, byte[] values) {
        return new InputTensor(shape, null, values);
    }

    public int[] shape() {
        return shape.clone();
    }

    /** "float32" or "uint8". */
    public String dtype() {
        return floats != null ? "float32" : "uint8";
    }

    public boolean isFloat() {
        return floats != null;
    }

    public int size() {
        return floats != null ? floats.length : bytes.length;
    }

    /** The float32 values (row-major in {@link #shape()}); the array is shared, not copied. */
    public float[] floats() {
        if (floats == null) {
            throw new IllegalStateException("this is a uint8 tensor (fused-input artifact); use bytes()");
        }
        return floats;
    }

    /** The uint8 values of a fused-input tensor; the array is shared, not copied. */
    public byte[] bytes() {
        if (bytes == null) {
            throw new IllegalStateException("this is a float32 tensor; use floats()");
        }
        return bytes;
    }

    /** The size in bytes of the tensor's data. */
    public int byteSize() {
        return floats != null ? floats.length * 4 : bytes.length;
    }

    /**
     * Write the tensor's data at {@code dst}'s position in native byte order (what LiteRT's
     * {@code Interpreter.run} expects of a direct buffer); the position advances.
     */
    public void writeTo(ByteBuffer dst) {
        if (floats != null) {
            ByteOrder old = dst.order();
            dst.order(ByteOrder.nativeOrder());
            dst.asFloatBuffer().put(floats);
            dst.position(dst.position() + floats.length * 4);
            dst.order(old);
        } else {
            dst.put(bytes);
        }
    }
}
