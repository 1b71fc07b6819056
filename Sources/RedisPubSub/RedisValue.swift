/// A reply from the server, copied out of hiredis's reply object.
///
/// Bulk strings are bytes, because Redis values are binary: use ``string`` to read one as UTF-8.
/// An error reply at the top level of a command's reply is thrown as a ``RedisError`` instead; inside an array
/// (for example the reply to `EXEC`) it is kept as ``error(_:)``.
public enum RedisValue: Hashable, Sendable {
    /// A simple string (`+OK`, `+PONG`).
    case simpleString(String)
    /// An error reply nested in an array.
    case error(String)
    /// An integer (`:42`).
    case integer(Int)
    /// A bulk string, byte for byte (`$5\r\nhello`).
    case bulkString([UInt8])
    /// The null bulk string or null array (`$-1`, `*-1`).
    case null
    /// An array (`*2\r\n...`).
    case array([RedisValue])

    /// The value as text: a simple string, or a bulk string decoded as UTF-8 (invalid sequences become U+FFFD),
    /// or an integer's decimal digits. `nil` for the other cases.
    public var string: String? {
        switch self {
        case .simpleString(let text): text
        case .bulkString(let bytes): String(decoding: bytes, as: UTF8.self)
        case .integer(let value): String(value)
        default: nil
        }
    }

    /// The raw bytes of a bulk string, or the UTF-8 of a simple string. `nil` for the other cases.
    public var bytes: [UInt8]? {
        switch self {
        case .bulkString(let bytes): bytes
        case .simpleString(let text): Array(text.utf8)
        default: nil
        }
    }

    /// An integer reply, or a bulk string holding a decimal integer.
    public var int: Int? {
        switch self {
        case .integer(let value): value
        case .bulkString(let bytes): Int(String(decoding: bytes, as: UTF8.self))
        default: nil
        }
    }

    /// The elements of an array reply.
    public var array: [RedisValue]? {
        if case .array(let elements) = self { return elements }
        return nil
    }

    /// Whether the reply is null.
    public var isNull: Bool {
        if case .null = self { return true }
        return false
    }
}

extension RedisValue: CustomStringConvertible {
    /// A compact rendering for logs and test failures; bulk strings longer than 64 bytes are abbreviated.
    public var description: String {
        switch self {
        case .simpleString(let text): return text
        case .error(let text): return "(error) \(text)"
        case .integer(let value): return "(integer) \(value)"
        case .null: return "(nil)"
        case .bulkString(let bytes):
            return quotedForDescription(bytes)
        case .array(let elements):
            return "[" + elements.map(\.description).joined(separator: ", ") + "]"
        }
    }
}

extension RedisValue {
    /// The bytes of a bulk string only.
    var bulkBytes: [UInt8]? {
        if case .bulkString(let bytes) = self { return bytes }
        return nil
    }

    /// What the value is, without its contents: for errors and log lines, which never carry payload bytes.
    var shape: String {
        switch self {
        case .simpleString(let text): "a simple string of \(text.utf8.count) bytes"
        case .error: "an error reply"
        case .integer: "an integer"
        case .bulkString(let bytes): "a bulk string of \(bytes.count) bytes"
        case .null: "null"
        case .array(let elements):
            "an array of \(elements.count) elements"
                + (elements.isEmpty ? "" : " (" + elements.prefix(4).map(\.shape).joined(separator: ", ")
                    + (elements.count > 4 ? ", ..." : "") + ")")
        }
    }
}

/// `bytes` as quoted UTF-8 for a description: `"hello"`, or the first 64 bytes and the size, `"hel…" (900 bytes)`.
func quotedForDescription(_ bytes: [UInt8]) -> String {
    let shown = String(decoding: bytes.prefix(64), as: UTF8.self)
    return bytes.count > 64 ? "\"\(shown)…\" (\(bytes.count) bytes)" : "\"\(shown)\""
}
