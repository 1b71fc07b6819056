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
    enum Storage: Sendable {
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

    /// Runs `body` with the bytes on the wire, without copying them.
    func withBytes<Result>(_ body: (UnsafeRawBufferPointer) -> Result) -> Result {
        switch storage {
        case .string(var string): string.withUTF8 { body(UnsafeRawBufferPointer($0)) }
        case .bytes(let bytes): bytes.withUnsafeBytes(body)
        }
    }

    /// Equal when the bytes on the wire are: `RedisArgument("a") == RedisArgument([0x61])`.
    public static func == (a: RedisArgument, b: RedisArgument) -> Bool {
        a.withBytes { x in b.withBytes { y in x.elementsEqual(y) } }
    }

    /// Hashes the bytes on the wire.
    public func hash(into hasher: inout Hasher) {
        withBytes { hasher.combine(bytes: $0) }
    }

    /// The first byte on the wire, without copying.
    var firstByte: UInt8? {
        switch storage {
        case .string(let string): string.utf8.first
        case .bytes(let bytes): bytes.first
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
