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

    /// Creates a message; the package creates them from the server's pushes.
    public init(channel: [UInt8], pattern: [UInt8]? = nil, isSharded: Bool = false, payload: [UInt8]) {
        self.channelBytes = channel
        self.patternBytes = pattern
        self.isSharded = isSharded
        self.payload = payload
    }

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

/// A message whose payload could not be decoded as the type asked for. The subscription goes on.
public struct MessageDecodingError: Error, Sendable, CustomStringConvertible {
    /// The message as received.
    public let message: Message
    /// The decoder's error.
    public let underlying: any Error

    /// Creates the error.
    public init(message: Message, underlying: any Error) {
        self.message = message
        self.underlying = underlying
    }

    /// Names the channel and the payload's size, and the decoder's reason.
    public var description: String {
        "cannot decode a \(message.payload.count)-byte message on '\(message.channel)': \(underlying)"
    }
}

/// What a subscription does when messages arrive faster than its consumer takes them.
///
/// Pub/Sub cannot slow the publisher down: a full buffer must drop something. The limit counts messages received and
/// not yet handed to the consumer (the consumer takes them in batches). Not reading at all just moves the backlog to
/// the server, which disconnects the client at its `client-output-buffer-limit pubsub`.
public struct BufferingPolicy: Sendable, Hashable, CustomStringConvertible {
    enum Base: Hashable, Sendable {
        case unbounded
        case newest(Int)
        case oldest(Int)
    }
    let base: Base

    /// Keeps the newest `limit` messages: when full, the oldest waiting message is dropped.
    public static func bufferingNewest(_ limit: Int) -> BufferingPolicy {
        precondition(limit > 0, "BufferingPolicy: the limit must be positive")
        return BufferingPolicy(base: .newest(limit))
    }

    /// Keeps the oldest `limit` messages: when full, arriving messages are dropped.
    public static func bufferingOldest(_ limit: Int) -> BufferingPolicy {
        precondition(limit > 0, "BufferingPolicy: the limit must be positive")
        return BufferingPolicy(base: .oldest(limit))
    }

    /// Never drops; memory grows as long as the consumer falls behind.
    public static let unbounded = BufferingPolicy(base: .unbounded)

    /// The default: ``bufferingNewest(_:)`` with 10,000 messages.
    public static let `default` = BufferingPolicy.bufferingNewest(10_000)

    /// E.g. `bufferingNewest(10000)`.
    public var description: String {
        switch base {
        case .unbounded: "unbounded"
        case .newest(let limit): "bufferingNewest(\(limit))"
        case .oldest(let limit): "bufferingOldest(\(limit))"
        }
    }
}

extension Message: CustomStringConvertible {
    /// E.g. `news (pattern n*): "hello"`, with payloads over 64 bytes abbreviated.
    public var description: String {
        let shown = String(decoding: payload.prefix(64), as: UTF8.self)
        let body = payload.count > 64 ? "\"\(shown)…\" (\(payload.count) bytes)" : "\"\(shown)\""
        return channel + (pattern.map { " (pattern \($0))" } ?? "") + ": " + body
    }
}

/// A change in a subscription's delivery: when it went deaf, and when it heard again.
///
/// Redis Pub/Sub delivers at most once: messages published between ``disconnected(at:cause:)`` and the following
/// ``resubscribed(at:gap:)`` are lost to this subscription. The times are wall-clock, to compare with timestamps the
/// publishers put in their messages.
public enum SubscriptionEvent: Sendable, Hashable, CustomStringConvertible {
    /// The connection was lost at this time; nothing is received until resubscribed.
    case disconnected(at: Date, cause: RedisError)
    /// Every channel of the subscription is confirmed by the server again; `gap` is how long it was not subscribed.
    case resubscribed(at: Date, gap: Duration)

    /// A one-line account for logs.
    public var description: String {
        switch self {
        case .disconnected(_, let cause): "disconnected: \(cause)"
        case .resubscribed(_, let gap): "resubscribed after a gap of \(gap)"
        }
    }
}
