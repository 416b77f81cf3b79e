package dev.edgevit.core;

import java.util.Arrays;

/**
 * An input or output tensor of a TFLite model as its flatbuffer declares it: name, shape, element
 * type and (for quantised tensors) the per-tensor scale and zero point.
 */
public final class TensorInfo {
    /** TFLite's TensorType enum, by value (schema.fbs), with numpy's names. */
    private static final String[] TYPES = {
        "float32", "float16", "int32", "uint8", "int64", "string", "bool", "int16", "complex64", "int8",
        "float64", "complex128", "uint64", "resource", "variant", "uint32", "uint16", "int4", "bfloat16",
        "int2", "uint4", "float8_e4m3fn", "float8_e5m2"};

    public final String name;
    private final int[] shape;
    /** numpy-style dtype name: "float32", "int8", "uint8", ... */
    public final String dtype;
    /** Quantisation scale; 0 when the tensor is not quantised. */
    public final float scale;
    public final long zeroPoint;
    /** Per-channel parameters (several scales): not usable for an input or output. */
    public final boolean perChannel;

    TensorInfo(String name, int[] shape, int typeCode, float scale, long zeroPoint, boolean perChannel) {
        this.name = name;
        this.shape = shape.clone();
        this.dtype = typeCode >= 0 && typeCode < TYPES.length ? TYPES[typeCode] : "type" + typeCode;
        this.scale = scale;
        this.zeroPoint = zeroPoint;
        this.perChannel = perChannel;
    }

    public int[] shape() {
        return shape.clone();
    }

    /** Whether values must be (de)quantised with {@link #scale} and {@link #zeroPoint}. */
    public boolean isQuantized() {
        return scale != 0f && ("int8".equals(dtype) || "uint8".equals(dtype) || "int16".equals(dtype));
    }

    public int elementCount() {
        int n = 1;
        for (int d : shape) {
            n *= d;
        }
        return n;
    }

    @Override
    public String toString() {
        return name + " " + dtype + Arrays.toString(shape) + (scale != 0f ? " q(" + scale + ", " + zeroPoint + ")" : "");
    }
}
