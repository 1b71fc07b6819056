#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#elseif canImport(Darwin)
import Darwin
#endif

/// What a reply on a subscriber connection is, as far as Pub/Sub goes: a message, a malformed message, an
/// unsubscribe that may be the server's own decision, or a reply to a command (`nil` from ``init(_:awaited:)``).
/// Shared by the single-node and the cluster subscriber; messages with a string payload take the faster
/// ``RawPush`` path and never get here.
enum PubSubPush {
    /// A message, with the name it is routed by (the channel, or the pattern that matched).
    case message(route: ChannelKey, Message)
    /// Message-shaped but unusable (a channel that is not a string, a wrong element count): dropped and counted.
    case malformed
    /// An unsubscribe-shaped reply other than the one the oldest command waits for: the server's own decision when
    /// the subscriber holds `key` (a sharded channel's slot moved), else a reply to a command.
    case unsubscribed(ChannelKey)

    /// Classifies `reply`; `nil` when it is not a push. `awaited` is the acknowledgement the oldest command waits for.
    init?(_ reply: RedisValue, awaited: Acknowledgement?) {
        guard case .array(let elements) = reply, let first = elements.first, case .bulkString(let type) = first else {
            return nil
        }
        let kind: SubscriptionKind
        switch type {
        case Array("message".utf8): kind = .channel
        case Array("pmessage".utf8): kind = .pattern
        case Array("smessage".utf8): kind = .shardChannel
        default:
            guard elements.count == 3, case .bulkString(let name) = elements[1] else { return nil }
            if awaited == Acknowledgement(type: type, name: name) { return nil }  // the reply to our own UNSUBSCRIBE
            let kinds: [SubscriptionKind] = [.channel, .pattern, .shardChannel]
            guard let kind = kinds.first(where: { $0.acknowledgement(subscribe: false) == type }) else { return nil }
            self = .unsubscribed(ChannelKey(kind: kind, name: name))
            return
        }
        let names = elements.dropFirst().dropLast()
        guard elements.count == (kind == .pattern ? 4 : 3),
              let routeName = names.first?.bulkBytes, let channel = names.last?.bulkBytes
        else {
            self = .malformed
            return
        }
        let pattern = kind == .pattern ? routeName : nil
        let message: Message
        if case .bulkString(let bytes) = elements[elements.count - 1] {
            message = Message(channel: channel, pattern: pattern, isSharded: kind == .shardChannel, payload: bytes)
        } else {
            message = Message(
                channel: channel, pattern: pattern, isSharded: kind == .shardChannel, payloadValue: elements[elements.count - 1])
        }
        self = .message(route: ChannelKey(kind: kind, name: routeName), message)
    }
}

extension Message {
    /// A message recognised in the raw reply, routed by `route` (its channel's or pattern's interned name).
    init(_ push: RawPush, route: [UInt8]) {
        switch push.kind {
        case .channel: self.init(channel: route, payload: Array(push.payload))
        case .shardChannel: self.init(channel: route, isSharded: true, payload: Array(push.payload))
        case .pattern: self.init(channel: Array(push.channel), pattern: route, payload: Array(push.payload))
        }
    }
}

extension Array where Element == UInt8 {
    /// Whether these bytes are `bytes`: one `memcmp`, not the generic `elementsEqual` (route caches check this once
    /// per message).
    @inline(__always)
    func sameBytes(as bytes: UnsafeRawBufferPointer) -> Bool {
        guard count == bytes.count else { return false }
        guard !bytes.isEmpty else { return true }
        return withUnsafeBytes { memcmp($0.baseAddress!, bytes.baseAddress!, bytes.count) == 0 }
    }
}
