#if canImport(FoundationEssentials)
public import FoundationEssentials
#else
public import Foundation
#endif

/// One argument of a command, sent byte for byte: text (as UTF-8) or arbitrary bytes, NUL and invalid UTF-8
/// included.
///
/// String and integer literals convert implicitly: `send("SET", "key", 42)`.
public struct RedisArgument: Hashable, Sendable, ExpressibleByStringLiteral, ExpressibleByIntegerLiteral {
    enum Storage: Hashable, Sendable {
        case string(String)
        case bytes([UInt8])
    }
    let storage: Storage

    /// Text, sent as its UTF-8 bytes.
    public init(_ string: String) { storage = .string(string) }
    /// Bytes, sent as they are.
    public init(_ bytes: [UInt8]) { storage = .bytes(bytes) }
    /// Bytes, sent as they are.
    public init(_ data: Data) { storage = .bytes(Array(data)) }
    /// An integer, sent as its decimal digits (what Redis expects for counts, database numbers and scores).
    public init(_ value: Int) { storage = .string(String(value)) }
    /// Text, sent as its UTF-8 bytes.
    public init(stringLiteral value: String) { storage = .string(value) }
    /// An integer, sent as its decimal digits.
    public init(integerLiteral value: Int) { self.init(value) }

    /// The bytes that go on the wire.
    public var bytes: [UInt8] {
        switch storage {
        case .string(let string): Array(string.utf8)
        case .bytes(let bytes): bytes
        }
    }

    /// Number of bytes on the wire.
    var count: Int {
        switch storage {
        case .string(let string): string.utf8.count
        case .bytes(let bytes): bytes.count
        }
    }
}

/// Encodes commands as RESP arrays of bulk strings: the request format every Redis command takes.
enum RESP {
    /// The complete request for `arguments`.
    static func encode(_ arguments: [RedisArgument]) -> [UInt8] {
        var size = 1 + 20 + 2
        for argument in arguments { size += 1 + 20 + 2 + argument.count + 2 }
        var out = [UInt8]()
        out.reserveCapacity(size)
        out.append(UInt8(ascii: "*"))
        appendDecimal(arguments.count, to: &out)
        out.append(13); out.append(10)
        for argument in arguments { append(argument, to: &out) }
        return out
    }

    /// `*3 $verb $channel $message` in one exact-size allocation (the publish fast path).
    static func encode(_ verb: StaticString, _ first: RedisArgument, _ second: RedisArgument) -> [UInt8] {
        var out = [UInt8]()
        out.reserveCapacity(encodedSizeBound(verb, first, second))
        append(verb, first, second, to: &out)
        return out
    }

    /// At least the size of `*3 $verb $first $second`.
    static func encodedSizeBound(_ verb: StaticString, _ first: RedisArgument, _ second: RedisArgument) -> Int {
        4 + 3 * 24 + verb.utf8CodeUnitCount + first.count + second.count
    }

    /// Appends `*3 $verb $first $second` (batches encode their commands back to back).
    static func append(_ verb: StaticString, _ first: RedisArgument, _ second: RedisArgument, to out: inout [UInt8]) {
        out.append(contentsOf: [UInt8(ascii: "*"), UInt8(ascii: "3"), 13, 10, UInt8(ascii: "$")])
        appendDecimal(verb.utf8CodeUnitCount, to: &out)
        out.append(13); out.append(10)
        verb.withUTF8Buffer { out.append(contentsOf: $0) }
        out.append(13); out.append(10)
        append(first, to: &out)
        append(second, to: &out)
    }

    static func append(_ argument: RedisArgument, to out: inout [UInt8]) {
        out.append(UInt8(ascii: "$"))
        appendDecimal(argument.count, to: &out)
        out.append(13); out.append(10)
        switch argument.storage {
        case .string(let string):
            var string = string
            string.withUTF8 { out.append(contentsOf: $0) }
        case .bytes(let bytes):
            out.append(contentsOf: bytes)
        }
        out.append(13); out.append(10)
    }

    static func appendDecimal(_ value: Int, to out: inout [UInt8]) {
        if value < 0 {
            out.append(UInt8(ascii: "-"))
            appendDecimal(UInt(value.magnitude), to: &out)
        } else {
            appendDecimal(UInt(value), to: &out)
        }
    }

    private static func appendDecimal(_ value: UInt, to out: inout [UInt8]) {
        if value < 10 {
            out.append(UInt8(ascii: "0") + UInt8(value))
            return
        }
        var digits: (UInt8, UInt8, UInt8, UInt8, UInt8, UInt8, UInt8, UInt8, UInt8, UInt8,
                     UInt8, UInt8, UInt8, UInt8, UInt8, UInt8, UInt8, UInt8, UInt8, UInt8) =
            (0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0)
        var remaining = value
        var count = 0
        withUnsafeMutableBytes(of: &digits) { buffer in
            while remaining > 0 {
                buffer[19 - count] = UInt8(ascii: "0") + UInt8(remaining % 10)
                remaining /= 10
                count += 1
            }
            out.append(contentsOf: buffer[(20 - count)...])
        }
    }
}

/// A value that can be a command argument: `String`, `Substring`, `[UInt8]`, `Data`, `Int` and ``RedisArgument``.
public protocol RedisArgumentConvertible: Sendable {
    /// The argument's wire form.
    var redisArgument: RedisArgument { get }
}

extension RedisArgument: RedisArgumentConvertible {
    /// Itself.
    public var redisArgument: RedisArgument { self }
}

extension String: RedisArgumentConvertible {
    /// The string's UTF-8 bytes.
    public var redisArgument: RedisArgument { RedisArgument(self) }
}

extension Substring: RedisArgumentConvertible {
    /// The substring's UTF-8 bytes.
    public var redisArgument: RedisArgument { RedisArgument(String(self)) }
}

extension Array: RedisArgumentConvertible where Element == UInt8 {
    /// The bytes as they are.
    public var redisArgument: RedisArgument { RedisArgument(self) }
}

extension Data: RedisArgumentConvertible {
    /// The bytes as they are.
    public var redisArgument: RedisArgument { RedisArgument(self) }
}

extension Int: RedisArgumentConvertible {
    /// The decimal digits.
    public var redisArgument: RedisArgument { RedisArgument(self) }
}
