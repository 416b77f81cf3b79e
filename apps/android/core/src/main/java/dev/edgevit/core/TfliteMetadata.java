package dev.edgevit.core;

import java.io.IOException;
import java.nio.ByteBuffer;
import java.nio.ByteOrder;
import java.nio.channels.FileChannel;
import java.nio.charset.StandardCharsets;
import java.util.ArrayList;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Map;

/**
 * Reads the named metadata entries of a TFLite (LiteRT) flatbuffer, the edgevit entry among them,
 * and the main subgraph's input and output tensors, without the interpreter.
 *
 * <p>It walks only the tables it needs, following the TFLite schema ({@code schema.fbs}):
 *
 * <pre>
 * table Model    { version:uint; operator_codes; subgraphs; description; buffers:[Buffer];
 *                  metadata_buffer:[int]; metadata:[Metadata]; signature_defs; }
 * table Metadata { name:string; buffer:uint; }
 * table Buffer   { data:[ubyte]; offset:ulong; size:ulong; }
 * table SubGraph { tensors:[Tensor]; inputs:[int]; outputs:[int]; ... }
 * table Tensor   { shape:[int]; type:TensorType; buffer:uint; name:string;
 *                  quantization:QuantizationParameters; ... }
 * table QuantizationParameters { min:[float]; max:[float]; scale:[float]; zero_point:[long]; ... }
 * </pre>
 *
 * Models over the 2 GB flatbuffer limit keep their buffers after the flatbuffer: {@code offset}
 * (from the start of the file) and {@code size} then locate the bytes, and {@code offset <= 1}
 * means "inline data". Every read is bounds-checked: a truncated or corrupt file raises {@link
 * EdgeVitException}, never an index error.
 */
public final class TfliteMetadata {
    // Field indices in the schema tables above.
    private static final int MODEL_SUBGRAPHS = 2;
    private static final int MODEL_BUFFERS = 4;
    private static final int MODEL_METADATA = 6;
    private static final int METADATA_NAME = 0;
    private static final int METADATA_BUFFER = 1;
    private static final int BUFFER_DATA = 0;
    private static final int BUFFER_OFFSET = 1;
    private static final int BUFFER_SIZE = 2;
    private static final int SUBGRAPH_TENSORS = 0;
    private static final int SUBGRAPH_INPUTS = 1;
    private static final int SUBGRAPH_OUTPUTS = 2;
    private static final int TENSOR_SHAPE = 0;
    private static final int TENSOR_TYPE = 1;
    private static final int TENSOR_NAME = 3;
    private static final int TENSOR_QUANTIZATION = 4;
    private static final int QUANT_SCALE = 2;
    private static final int QUANT_ZERO_POINT = 3;

    /** Metadata entries are small JSON documents; refuse anything implausibly large. */
    private static final long MAX_ENTRY_BYTES = 64L * 1024 * 1024;

    private TfliteMetadata() {}

    /** Random access to the model bytes: a buffer in memory or a file channel. */
    private interface Source {
        long size();

        /** {@code len} bytes at {@code pos}, little-endian; the caller has checked the bounds. */
        ByteBuffer read(long pos, int len);
    }

    private static final class BufferSource implements Source {
        private final ByteBuffer buf;

        BufferSource(ByteBuffer buf) {
            this.buf = buf.slice().order(ByteOrder.LITTLE_ENDIAN);
        }

        @Override
        public long size() {
            return buf.limit();
        }

        @Override
        public ByteBuffer read(long pos, int len) {
            ByteBuffer dup = buf.duplicate().order(ByteOrder.LITTLE_ENDIAN);
            dup.position((int) pos);
            dup.limit((int) pos + len);
            return dup.slice().order(ByteOrder.LITTLE_ENDIAN);
        }
    }

    private static final class ChannelSource implements Source {
        private final FileChannel channel;
        private final long size;

        ChannelSource(FileChannel channel) throws IOException {
            this.channel = channel;
            this.size = channel.size();
        }

        @Override
        public long size() {
            return size;
        }

        @Override
        public ByteBuffer read(long pos, int len) {
            ByteBuffer out = ByteBuffer.allocate(len).order(ByteOrder.LITTLE_ENDIAN);
            try {
                while (out.hasRemaining()) {
                    int n = channel.read(out, pos + out.position());
                    if (n < 0) {
                        throw new EdgeVitException("TFLite model is truncated (end of file at " + (pos + out.position()) + ")");
                    }
                }
            } catch (IOException e) {
                throw new EdgeVitException("could not read the TFLite model: " + e.getMessage(), e);
            }
            out.flip();
            return out;
        }
    }

    /** A bounds-checked flatbuffer reader over a {@link Source}. */
    private static final class Reader {
        private final Source src;
        private final String name;

        Reader(Source src, String name) {
            this.src = src;
            this.name = name;
        }

        EdgeVitException corrupt(String what) {
            return new EdgeVitException(name + " is a corrupt TFLite flatbuffer (" + what + ")");
        }

        ByteBuffer bytes(long pos, long len, String what) {
            if (pos < 0 || len < 0 || pos + len > src.size()) {
                throw corrupt(what + " lies outside the file");
            }
            return src.read(pos, (int) len);
        }

        long u32(long pos) {
            return bytes(pos, 4, "offset").getInt(0) & 0xFFFFFFFFL;
        }

        /** The table that the uoffset stored at {@code pos} points to. */
        long deref(long pos) {
            return pos + u32(pos);
        }

        /** Position of field {@code index} of the table at {@code table}, or -1 when absent. */
        long field(long table, int index) {
            int soffset = bytes(table, 4, "table").getInt(0);
            long vtable = table - soffset;
            int vtableSize = bytes(vtable, 2, "vtable").getShort(0) & 0xFFFF;
            if (vtableSize < 4 || (vtableSize & 1) != 0) {
                throw corrupt("bad vtable size " + vtableSize);
            }
            int slot = 4 + 2 * index;
            if (slot + 2 > vtableSize) {
                return -1;
            }
            int off = bytes(vtable + slot, 2, "vtable").getShort(0) & 0xFFFF;
            return off == 0 ? -1 : table + off;
        }

        /** (start of elements, length) of the vector whose uoffset is at {@code pos}. */
        long[] vector(long pos, int elementSize) {
            long vec = deref(pos);
            long n = u32(vec);
            if (vec + 4 + n * elementSize > src.size()) {
                throw corrupt("vector of " + n + " elements runs past the end of the file");
            }
            return new long[] {vec + 4, n};
        }

        String string(long pos) {
            long[] v = vector(pos, 1);
            ByteBuffer b = bytes(v[0], v[1], "string");
            byte[] out = new byte[(int) v[1]];
            b.get(out);
            return new String(out, StandardCharsets.UTF_8);
        }

        int scalarU8(long table, int index, int dflt) {
            long p = field(table, index);
            return p < 0 ? dflt : bytes(p, 1, "field").get(0) & 0xFF;
        }

        long scalarU32(long table, int index, long dflt) {
            long p = field(table, index);
            return p < 0 ? dflt : u32(p);
        }

        long scalarU64(long table, int index) {
            long p = field(table, index);
            if (p < 0) {
                return 0;
            }
            long v = bytes(p, 8, "field").getLong(0);
            if (v < 0) {
                throw corrupt("buffer offset/size over 2^63");
            }
            return v;
        }
    }

    /** All named metadata entries of the model in {@code model} (position to limit), as raw bytes. */
    public static Map<String, byte[]> readEntries(ByteBuffer model, String name) {
        return readEntries(new BufferSource(model), name);
    }

    public static Map<String, byte[]> readEntries(byte[] model, String name) {
        return readEntries(ByteBuffer.wrap(model), name);
    }

    /**
     * All named metadata entries read through a file channel: only the few bytes the walk needs
     * are read, so this also works for models too large to map or load.
     */
    public static Map<String, byte[]> readEntries(FileChannel channel, String name) throws IOException {
        return readEntries(new ChannelSource(channel), name);
    }

    /** The edgevit metadata of a model held in memory. */
    public static ArtifactMetadata read(ByteBuffer model, String name) {
        return edgevit(readEntries(model, name), name);
    }

    public static ArtifactMetadata read(byte[] model, String name) {
        return read(ByteBuffer.wrap(model), name);
    }

    public static ArtifactMetadata read(FileChannel channel, String name) throws IOException {
        return edgevit(readEntries(channel, name), name);
    }

    private static ArtifactMetadata edgevit(Map<String, byte[]> entries, String name) {
        byte[] json = entries.get(ArtifactMetadata.METADATA_KEY);
        if (json == null) {
            throw new EdgeVitException(name + " has no edgevit metadata; export it with `edgevit export` "
                    + "(labels and preprocessing are read from there)");
        }
        return ArtifactMetadata.fromJson(json);
    }

    /** Check the file identifier and return the position of the root Model table. */
    private static long modelTable(Reader r, Source src, String name) {
        if (src.size() == 0) {
            throw new EdgeVitException(name + " is empty (0 bytes)");
        }
        if (src.size() < 16) {
            throw new EdgeVitException(name + " is not a TFLite model (no TFL3 flatbuffer identifier)");
        }
        byte[] ident = new byte[4];
        src.read(4, 4).get(ident);
        if (!"TFL3".equals(new String(ident, StandardCharsets.US_ASCII))) {
            throw new EdgeVitException(name + " is not a TFLite model (no TFL3 flatbuffer identifier)");
        }
        return r.deref(0);
    }

    private static Map<String, byte[]> readEntries(Source src, String name) {
        Reader r = new Reader(src, name);
        long model = modelTable(r, src, name);
        Map<String, byte[]> entries = new LinkedHashMap<>();
        long metaField = r.field(model, MODEL_METADATA);
        if (metaField < 0) {
            return entries;
        }
        long buffersField = r.field(model, MODEL_BUFFERS);
        long[] metas = r.vector(metaField, 4);
        long[] buffers = buffersField < 0 ? new long[] {0, 0} : r.vector(buffersField, 4);
        for (long i = 0; i < metas[1]; i++) {
            long meta = r.deref(metas[0] + 4 * i);
            long nameField = r.field(meta, METADATA_NAME);
            String key = nameField < 0 ? "" : r.string(nameField);
            long index = r.scalarU32(meta, METADATA_BUFFER, 0);
            if (index >= buffers[1]) {
                throw r.corrupt("metadata '" + key + "' names buffer " + index + " of " + buffers[1]);
            }
            long buffer = r.deref(buffers[0] + 4 * index);
            entries.put(key, bufferBytes(r, src, buffer, key, name));
        }
        return entries;
    }

    /** The inputs of the model's first (main) subgraph, in order. */
    public static List<TensorInfo> inputs(ByteBuffer model, String name) {
        return tensors(new BufferSource(model), name, SUBGRAPH_INPUTS);
    }

    public static List<TensorInfo> inputs(byte[] model, String name) {
        return inputs(ByteBuffer.wrap(model), name);
    }

    /** The outputs of the model's first (main) subgraph, in order. */
    public static List<TensorInfo> outputs(ByteBuffer model, String name) {
        return tensors(new BufferSource(model), name, SUBGRAPH_OUTPUTS);
    }

    public static List<TensorInfo> outputs(byte[] model, String name) {
        return outputs(ByteBuffer.wrap(model), name);
    }

    private static List<TensorInfo> tensors(Source src, String name, int which) {
        Reader r = new Reader(src, name);
        long model = modelTable(r, src, name);
        long subgraphsField = r.field(model, MODEL_SUBGRAPHS);
        if (subgraphsField < 0) {
            throw r.corrupt("no subgraphs");
        }
        long[] subgraphs = r.vector(subgraphsField, 4);
        if (subgraphs[1] == 0) {
            throw r.corrupt("no subgraphs");
        }
        long graph = r.deref(subgraphs[0]);
        long tensorsField = r.field(graph, SUBGRAPH_TENSORS);
        long[] tensors = tensorsField < 0 ? new long[] {0, 0} : r.vector(tensorsField, 4);
        long listField = r.field(graph, which);
        List<TensorInfo> out = new ArrayList<>();
        if (listField < 0) {
            return out;
        }
        long[] list = r.vector(listField, 4);
        for (long i = 0; i < list[1]; i++) {
            long index = r.u32(list[0] + 4 * i);
            if (index >= tensors[1]) {
                throw r.corrupt("tensor index " + index + " of " + tensors[1]);
            }
            out.add(tensor(r, r.deref(tensors[0] + 4 * index)));
        }
        return out;
    }

    private static TensorInfo tensor(Reader r, long tensor) {
        long shapeField = r.field(tensor, TENSOR_SHAPE);
        int[] shape = new int[0];
        if (shapeField >= 0) {
            long[] v = r.vector(shapeField, 4);
            ByteBuffer b = r.bytes(v[0], 4 * v[1], "shape");
            shape = new int[(int) v[1]];
            for (int i = 0; i < shape.length; i++) {
                shape[i] = b.getInt(4 * i);
            }
        }
        int type = r.scalarU8(tensor, TENSOR_TYPE, 0);
        long nameField = r.field(tensor, TENSOR_NAME);
        String tensorName = nameField < 0 ? "" : r.string(nameField);
        float scale = 0f;
        long zeroPoint = 0;
        boolean perChannel = false;
        long quantField = r.field(tensor, TENSOR_QUANTIZATION);
        if (quantField >= 0) {
            long quant = r.deref(quantField);
            long scaleField = r.field(quant, QUANT_SCALE);
            long zeroField = r.field(quant, QUANT_ZERO_POINT);
            // Per-tensor parameters; per-channel ones (several scales) only occur on weights.
            if (scaleField >= 0) {
                long[] v = r.vector(scaleField, 4);
                if (v[1] == 1) {
                    scale = r.bytes(v[0], 4, "scale").getFloat(0);
                }
                perChannel = v[1] > 1;
            }
            if (zeroField >= 0) {
                long[] v = r.vector(zeroField, 8);
                if (v[1] == 1) {
                    zeroPoint = r.bytes(v[0], 8, "zero point").getLong(0);
                }
            }
        }
        return new TensorInfo(tensorName, shape, type, scale, zeroPoint, perChannel);
    }

    private static byte[] bufferBytes(Reader r, Source src, long buffer, String key, String name) {
        long offset = r.scalarU64(buffer, BUFFER_OFFSET);
        long start;
        long size;
        if (offset > 1) { // large models: the bytes follow the flatbuffer
            start = offset;
            size = r.scalarU64(buffer, BUFFER_SIZE);
            if (start + size > src.size()) {
                throw new EdgeVitException(name + " is truncated (metadata buffer past end of file)");
            }
        } else {
            long dataField = r.field(buffer, BUFFER_DATA);
            if (dataField < 0) {
                return new byte[0];
            }
            long[] v = r.vector(dataField, 1);
            start = v[0];
            size = v[1];
        }
        if (size > MAX_ENTRY_BYTES) {
            throw new EdgeVitException(name + ": metadata entry '" + key + "' is implausibly large (" + size + " bytes)");
        }
        byte[] out = new byte[(int) size];
        r.bytes(start, size, "metadata buffer").get(out);
        return out;
    }
}
