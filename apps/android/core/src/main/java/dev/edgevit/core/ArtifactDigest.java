package dev.edgevit.core;

import java.nio.charset.StandardCharsets;
import java.security.MessageDigest;
import java.security.NoSuchAlgorithmException;

/**
 * The SHA-256 integrity digest that {@code edgevit export} seals into {@code .tflite} artifacts
 * (metadata entry {@code edgevit_sha256}) and {@code .pte} programs: {@code edgevit-sha256:}
 * followed by the 64 lowercase hex characters of the SHA-256 of the whole file, computed with those
 * 64 characters read as {@code 0}. Check it before handing the bytes to LiteRT, which does not
 * verify the flatbuffer: a damaged file can crash the app natively, and a flipped weight bit is
 * not noticed at all. Integrity, not authenticity: ship artifacts you trust. Same rules as
 * {@code edgevit.runtimes.integrity} in Python.
 */
public final class ArtifactDigest {
    private static final byte[] PREFIX = "edgevit-sha256:".getBytes(StandardCharsets.US_ASCII);
    private static final int HEX = 64;
    private static final char[] DIGITS = "0123456789abcdef".toCharArray();

    private ArtifactDigest() {}

    /**
     * Throws {@link EdgeVitException} unless {@code data} holds exactly one digest matching its
     * content; returns the digest (64 hex characters).
     */
    public static String verify(byte[] data, String name) {
        int at = indexOf(data, 0);
        if (at < 0) {
            throw new EdgeVitException(name + " has no edgevit integrity digest: it was not exported by edgevit, "
                    + "by an edgevit older than the digest, or it is damaged; export it again with "
                    + "`edgevit export --target tflite`");
        }
        if (indexOf(data, at + 1) >= 0) {
            throw new EdgeVitException(name + " is corrupt: it holds more than one edgevit digest");
        }
        int start = at + PREFIX.length;
        if (start + HEX > data.length) {
            throw new EdgeVitException(name + " is corrupt: its integrity digest is damaged");
        }
        for (int i = start; i < start + HEX; i++) {
            byte b = data[i];
            if (!((b >= '0' && b <= '9') || (b >= 'a' && b <= 'f'))) {
                throw new EdgeVitException(name + " is corrupt: its integrity digest is damaged");
            }
        }
        String stored = new String(data, start, HEX, StandardCharsets.US_ASCII);
        if (!digestAt(data, start).equals(stored)) {
            throw new EdgeVitException(name + " is corrupt: its SHA-256 does not match the digest stored at export "
                    + "(damaged in transfer or edited); copy the file again or re-export it");
        }
        return stored;
    }

    /** SHA-256 (hex) of {@code data} with the 64 characters at {@code at} read as {@code 0}. */
    static String digestAt(byte[] data, int at) {
        MessageDigest sha;
        try {
            sha = MessageDigest.getInstance("SHA-256");
        } catch (NoSuchAlgorithmException e) {
            throw new IllegalStateException("SHA-256 is required of every Java platform", e);
        }
        byte[] zeros = new byte[HEX];
        java.util.Arrays.fill(zeros, (byte) '0');
        sha.update(data, 0, at);
        sha.update(zeros);
        sha.update(data, at + HEX, data.length - at - HEX);
        byte[] hash = sha.digest();
        char[] out = new char[hash.length * 2];
        for (int i = 0; i < hash.length; i++) {
            out[2 * i] = DIGITS[(hash[i] >> 4) & 0xF];
            out[2 * i + 1] = DIGITS[hash[i] & 0xF];
        }
        return new String(out);
    }

    private static int indexOf(byte[] data, int from) {
        outer:
        for (int i = from; i <= data.length - PREFIX.length; i++) {
            for (int j = 0; j < PREFIX.length; j++) {
                if (data[i + j] != PREFIX[j]) {
                    continue outer;
                }
            }
            return i;
        }
        return -1;
    }
}
