package dev.edgevit.core;

/**
 * A problem with an artifact or an input that the user can fix (wrong file, malformed metadata,
 * unsupported setting). The message names the problem and, where there is one, the fix.
 */
public class EdgeVitException extends RuntimeException {
    private static final long serialVersionUID = 1L;

    public EdgeVitException(String message) {
        super(message);
    }

    public EdgeVitException(String message, Throwable cause) {
        super(message, cause);
    }
}
