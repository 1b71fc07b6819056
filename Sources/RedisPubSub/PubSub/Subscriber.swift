public import Logging
import Synchronization

/// Receives Pub/Sub messages: every subscription of a `Subscriber` shares its one connection.
///
/// ```swift
/// let subscriber = try await Subscriber.connect(to: .fromEnvironment())
/// let subscription = try await subscriber.subscribe(to: "notifications")
/// for try await message in subscription {
///     print("\(message.channel): \(message.string)")
/// }
/// ```
///
/// `subscribe` returns once the server acknowledged every channel, so a message published after it returns is
/// received. Channels are reference-counted: two subscriptions to one channel both get every message, and the server
/// is told to unsubscribe only when the last of them ends. A subscription ends, and unsubscribes, when its `for` loop
/// exits, when its task is cancelled, or when it is released.
public final class Subscriber: Sendable {
    let lifetime: SubscriberLifetime

    private init(lifetime: SubscriberLifetime) {
        self.lifetime = lifetime
    }

    /// The configuration this subscriber connected with.
    public var configuration: RedisConfiguration { lifetime.core.connection.configuration }

    /// The event-loop thread as a task executor; see ``RedisConnection/taskExecutor``. A consuming task that prefers
    /// it is resumed by arriving messages without waking another thread, which cuts the delivery latency.
    public var taskExecutor: any TaskExecutor { lifetime.core.connection.loop }

    /// Connects a subscriber connection (with the same handshake as ``RedisConnection/connect(to:logger:)``).
    ///
    /// - Throws: as ``RedisConnection/connect(to:logger:)``.
    public static func connect(
        to configuration: RedisConfiguration,
        logger: Logger = RedisConnection.disabledLogger
    ) async throws -> Subscriber {
        try await connect(to: configuration, logger: logger, on: .shared)
    }

    /// Connects on a loop of the caller's choosing (tests that load a loop heavily use their own).
    static func connect(to configuration: RedisConfiguration, logger: Logger, on loop: EventLoop) async throws -> Subscriber {
        try configuration.validate()
        let connection = ConnectionCore(configuration: configuration, logger: logger, loop: loop)
        let core = SubscriberCore(connection: connection)
        let lifetime = SubscriberLifetime(core: core)  // closes the connection if connecting fails
        let waiter = Pending<Void>()
        try await waiter.wait {
            connection.loop.execute {
                connection.pushHandler = core
                connection.connect(waiter)
            }
        }
        return Subscriber(lifetime: lifetime)
    }

    /// Subscribes to one or more channels (`SUBSCRIBE`) and returns once the server acknowledged all of them.
    ///
    /// While the connection is down (reconnecting), the call waits for the reconnect, up to
    /// ``RedisConfiguration/connectTimeout``, then throws ``RedisError/Code/connectionClosed``.
    ///
    /// - Parameters:
    ///   - channels: channel names; text or bytes.
    ///   - bufferingPolicy: what to drop when the consumer falls behind; ``BufferingPolicy/default`` keeps the
    ///     newest 10,000 messages.
    /// - Throws: ``RedisError`` (``RedisError/Code/permissionDenied`` when an ACL forbids a channel,
    ///   ``RedisError/Code/connectionClosed``, ``RedisError/Code/timeout``), `CancellationError`.
    public func subscribe(
        to channels: any RedisArgumentConvertible...,
        bufferingPolicy: BufferingPolicy = .default
    ) async throws -> Subscription {
        try await subscribe(.channel, channels, bufferingPolicy)
    }

    /// Subscribes to the channels in an array; see ``subscribe(to:bufferingPolicy:)-(RedisArgumentConvertible...,_)``.
    public func subscribe(
        to channels: [any RedisArgumentConvertible],
        bufferingPolicy: BufferingPolicy = .default
    ) async throws -> Subscription {
        try await subscribe(.channel, channels, bufferingPolicy)
    }

    /// Subscribes to glob patterns (`PSUBSCRIBE`: `*`, `?`, `[ae]`, `\*` for a literal star). Messages carry the
    /// matching ``Message/pattern``.
    ///
    /// - Throws: as ``subscribe(to:bufferingPolicy:)-(RedisArgumentConvertible...,_)``.
    public func subscribe(
        toPatterns patterns: any RedisArgumentConvertible...,
        bufferingPolicy: BufferingPolicy = .default
    ) async throws -> Subscription {
        try await subscribe(.pattern, patterns, bufferingPolicy)
    }

    /// Subscribes to the glob patterns in an array (`PSUBSCRIBE`).
    public func subscribe(
        toPatterns patterns: [any RedisArgumentConvertible],
        bufferingPolicy: BufferingPolicy = .default
    ) async throws -> Subscription {
        try await subscribe(.pattern, patterns, bufferingPolicy)
    }

    /// Subscribes to sharded channels (`SSUBSCRIBE`, Redis 7). Messages have ``Message/isSharded`` set.
    ///
    /// - Throws: as ``subscribe(to:bufferingPolicy:)-(RedisArgumentConvertible...,_)``.
    public func subscribe(
        toShardChannels channels: any RedisArgumentConvertible...,
        bufferingPolicy: BufferingPolicy = .default
    ) async throws -> Subscription {
        try await subscribe(.shardChannel, channels, bufferingPolicy)
    }

    /// Subscribes to the sharded channels in an array (`SSUBSCRIBE`).
    public func subscribe(
        toShardChannels channels: [any RedisArgumentConvertible],
        bufferingPolicy: BufferingPolicy = .default
    ) async throws -> Subscription {
        try await subscribe(.shardChannel, channels, bufferingPolicy)
    }

    /// One subscription to channels, patterns and sharded channels together: its messages arrive in the order the
    /// server sent them, so a message matching both a channel and a pattern arrives twice, first as the channel's.
    ///
    /// - Throws: as ``subscribe(to:bufferingPolicy:)-(RedisArgumentConvertible...,_)``.
    public func subscribe(
        channels: [any RedisArgumentConvertible] = [],
        patterns: [any RedisArgumentConvertible] = [],
        shardChannels: [any RedisArgumentConvertible] = [],
        bufferingPolicy: BufferingPolicy = .default
    ) async throws -> Subscription {
        let keys = channels.map { ChannelKey(kind: .channel, name: $0.redisArgument.bytes) }
            + patterns.map { ChannelKey(kind: .pattern, name: $0.redisArgument.bytes) }
            + shardChannels.map { ChannelKey(kind: .shardChannel, name: $0.redisArgument.bytes) }
        return try await subscribe(keys, bufferingPolicy)
    }

    /// The number of subscriptions registered on the connection right now.
    func activeSubscriptionCount() async -> Int {
        await withCheckedContinuation { continuation in
            lifetime.core.execute { continuation.resume(returning: $0.subscriptionCount) }
        }
    }

    private func subscribe(
        _ kind: SubscriptionKind,
        _ names: [any RedisArgumentConvertible],
        _ policy: BufferingPolicy
    ) async throws -> Subscription {
        try await subscribe(names.map { ChannelKey(kind: kind, name: $0.redisArgument.bytes) }, policy)
    }

    private func subscribe(_ keys: [ChannelKey], _ policy: BufferingPolicy) async throws -> Subscription {
        guard !keys.isEmpty else { throw RedisError(.invalidArgument, "subscribe needs at least one channel or pattern") }
        let sink = SubscriptionSink(keys: keys, policy: policy)
        let handle = SubscriptionHandle(sink: sink, lifetime: lifetime)  // ends (unsubscribes) if we fail below
        try await sink.ready.wait {
            lifetime.core.execute { $0.add(sink) }
        }
        return Subscription(handle: handle)
    }

    /// Closes gracefully: unsubscribes every channel, waits for the server's acknowledgements (delivering the messages
    /// that arrive before them) for at most ``RedisConfiguration/commandTimeout``, then closes the connection. Every
    /// subscription's loop then ends normally after the messages already received. Calling it again does nothing more.
    ///
    /// Cancelling the calling task closes at once, without waiting for the acknowledgements.
    public func close() async {
        let core = lifetime.core
        await withTaskCancellationHandler {
            await withCheckedContinuation { (continuation: CheckedContinuation<Void, Never>) in
                core.execute { core in core.close { continuation.resume() } }
            }
        } onCancel: {
            core.connection.forceClose()
        }
    }

    /// Message-shaped pushes the server sent that were too malformed to deliver (a channel name that is not a string,
    /// say), dropped and counted here rather than treated as a reason to reset the connection.
    public var discardedPushCount: Int { lifetime.core.discardedPushes.load(ordering: .relaxed) }

    /// The connection's changes from now on: disconnected (with the cause), reconnecting, reconnected, closed.
    /// Each access returns a new sequence; it ends when the subscriber is closed.
    public var events: AsyncStream<ConnectionEvent> { lifetime.core.connection.events.stream() }
}

/// Keeps a subscriber's connection open while its `Subscriber` or any of its subscriptions exists.
final class SubscriberLifetime: Sendable {
    let core: SubscriberCore

    init(core: SubscriberCore) {
        self.core = core
    }

    deinit {
        core.execute { core in core.close {} }
    }
}
