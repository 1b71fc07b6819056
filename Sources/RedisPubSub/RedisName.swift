#if canImport(FoundationEssentials)
public import FoundationEssentials
#else
public import Foundation
#endif

/// The name of a channel, a pattern or a key: a sequence of bytes, most often written as text.
///
/// Redis names are binary-safe, and so is this type: two names are equal when their bytes are, whatever mix of
/// text and bytes made them. String literals (interpolation included) are names, so `"orders"` and `"user:\(id)"`
/// need no conversion; `RedisName(bytes: [0x80, 0x81])` is a name that is not UTF-8. Integers are not names: a
/// channel called `42` is spelled `"42"`.
///
/// Introspection results (``RedisConnection/pubsubNumberOfSubscribers(_:)`` and the like) hold names with their
/// exact bytes, so binary channel names round-trip.
public struct RedisName: Hashable, Sendable, Comparable, ExpressibleByStringInterpolation, CustomStringConvertible {
    /// The wire form: text stays a `String` until it is written, so passing a name costs no copy.
    let argument: RedisArgument

    /// The name spelled by `text`'s UTF-8 bytes.
    public init(_ text: some StringProtocol) { argument = RedisArgument(String(text)) }
    /// The name made of exactly these bytes.
    public init(bytes: some Sequence<UInt8>) { argument = RedisArgument(Array(bytes)) }
    /// The name spelled by a string literal.
    public init(stringLiteral value: String) { argument = RedisArgument(value) }

    /// The name's bytes.
    public var bytes: [UInt8] { argument.bytes }

    /// The name as text, or `nil` when its bytes are not valid UTF-8.
    public var string: String? {
        switch argument.storage {
        case .string(let text): text
        case .bytes(let bytes): String(validating: bytes, as: UTF8.self)
        }
    }

    /// The text, with every byte that is not part of valid UTF-8 written as `\xNN`: `news`, `\x80\x81`.
    public var description: String {
        if let string { return string }
        var text = ""
        var bytes = self.bytes[...]
        while !bytes.isEmpty {
            // The longest valid prefix (at most 4 bytes per scalar), then one escaped byte.
            var length = 0
            for candidate in stride(from: min(4, bytes.count), through: 1, by: -1)
            where String(validating: bytes.prefix(candidate), as: UTF8.self) != nil {
                length = candidate
                break
            }
            if length > 0 {
                text += String(decoding: bytes.prefix(length), as: UTF8.self)
                bytes = bytes.dropFirst(length)
            } else {
                text += "\\x" + String(bytes[bytes.startIndex], radix: 16, uppercase: true).leftPadded(to: 2)
                bytes = bytes.dropFirst()
            }
        }
        return text
    }

    /// Equal when the bytes are.
    public static func == (a: RedisName, b: RedisName) -> Bool {
        a.argument.withBytes { x in b.argument.withBytes { y in x.elementsEqual(y) } }
    }

    /// Hashes the bytes.
    public func hash(into hasher: inout Hasher) {
        argument.withBytes { hasher.combine(bytes: $0) }
    }

    /// Byte order (what `PUBSUB CHANNELS` results are sorted by, for example).
    public static func < (a: RedisName, b: RedisName) -> Bool {
        a.argument.withBytes { x in b.argument.withBytes { y in x.lexicographicallyPrecedes(y) } }
    }
}

/// A value that can name a channel, a pattern or a key: `String`, `Substring`, `[UInt8]`, `Data` and
/// ``RedisName``. Integers are deliberately not names (so `[0x80, 0x81]` is one binary name, never two channels
/// called `128` and `129`).
public protocol RedisNameConvertible: RedisArgumentConvertible {}

extension RedisName: RedisNameConvertible {
    /// The name's bytes, as a command argument.
    public var redisArgument: RedisArgument { argument }
}

extension String: RedisNameConvertible {}
extension Substring: RedisNameConvertible {}
extension Array: RedisNameConvertible where Element == UInt8 {}
extension Data: RedisNameConvertible {}

extension RedisNameConvertible {
    /// The value as a name.
    var redisName: RedisName { RedisName(argument: redisArgument) }
}

extension RedisName {
    init(argument: RedisArgument) { self.argument = argument }
}
