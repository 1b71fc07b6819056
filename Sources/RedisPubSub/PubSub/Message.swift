#if canImport(FoundationEssentials)
public import FoundationEssentials
#else
public import Foundation
#endif

/// One Pub/Sub message as a subscription receives it.
///
/// Channel, pattern and payload are kept as the server sent them, byte for byte; ``channel``, ``pattern`` and
/// ``string`` read them as UTF-8, ``decode(_:using:)`` as JSON.
public struct Message: Sendable, Hashable {
    /// The channel the message was published to, as bytes.
    public let channelBytes: [UInt8]
    /// The glob pattern that matched, for messages received through a pattern subscription.
    public let patternBytes: [UInt8]?
    /// Whether it arrived through a sharded-channel subscription (`SSUBSCRIBE`).
    public let isSharded: Bool
    /// The payload, byte for byte.
    public let payload: [UInt8]
    /// Boxed, so ordinary messages stay small.
    private let structured: StructuredPayload?

    /// Creates a message; the package creates them from the server's pushes.
    public init(channel: [UInt8], pattern: [UInt8]? = nil, isSharded: Bool = false, payload: [UInt8]) {
        self.channelBytes = channel
        self.patternBytes = pattern
        self.isSharded = isSharded
        self.payload = payload
        self.structured = nil
    }

    /// A message whose payload is not a string (``payloadValue``).
    init(channel: [UInt8], pattern: [UInt8]?, isSharded: Bool, payloadValue: RedisValue) {
        self.channelBytes = channel
        self.patternBytes = pattern
        self.isSharded = isSharded
        self.payload = []
        self.structured = StructuredPayload(payloadValue)
    }

    /// The payload when the server sent something other than a string: on `__redis__:invalidate` (client-side
    /// caching with `CLIENT TRACKING ... REDIRECT`), the array of invalidated keys, or ``RedisValue/null`` when the
    /// whole keyspace was flushed. `nil` for ordinary messages; when it is set, ``payload`` is empty.
    public var payloadValue: RedisValue? { structured?.value }

    /// The channel name as UTF-8 text (invalid sequences become U+FFFD).
    public var channel: String { String(decoding: channelBytes, as: UTF8.self) }
    /// The matching pattern as UTF-8 text, for pattern subscriptions.
    public var pattern: String? { patternBytes.map { String(decoding: $0, as: UTF8.self) } }
    /// The payload as UTF-8 text (invalid sequences become U+FFFD).
    public var string: String { String(decoding: payload, as: UTF8.self) }
    /// The payload as `Data`.
    public var data: Data { Data(payload) }

    /// Decodes the payload as JSON.
    ///
    /// - Throws: ``MessageDecodingError`` carrying the message and the decoder's error.
    public func decode<T: Decodable>(_ type: T.Type = T.self, using decoder: JSONDecoder = JSONDecoder()) throws(MessageDecodingError) -> T {
        do {
            return try decoder.decode(T.self, from: Data(payload))
        } catch {
            throw MessageDecodingError(message: self, underlying: error)
        }
    }
}

extension Message: CustomStringConvertible {
    /// E.g. `news (pattern n*): "hello"`, with payloads over 64 bytes abbreviated.
    public var description: String {
        let body = payloadValue.map { "\($0)" } ?? quotedForDescription(payload)
        return channel + (pattern.map { " (pattern \($0))" } ?? "") + ": " + body
    }
}

/// A payload that is not a string, kept out of line: almost no message has one.
private final class StructuredPayload: Hashable, Sendable {
    let value: RedisValue
    init(_ value: RedisValue) { self.value = value }
    static func == (a: StructuredPayload, b: StructuredPayload) -> Bool { a.value == b.value }
    func hash(into hasher: inout Hasher) { hasher.combine(value) }
}
