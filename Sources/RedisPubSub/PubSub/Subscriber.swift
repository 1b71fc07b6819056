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
/// is told to unsubscribe only when the last of them ends. A subscription ends, and unsubscribes, on
/// ``Subscription/cancel()`` or ``Subscription/unsubscribe()``, when the task reading it is cancelled, when it is
/// released, or when the closure of ``subscribe(to:bufferingPolicy:isolation:_:)`` returns (see ``Subscription``).
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
    ) async throws(RedisError) -> Subscriber {
        try await connect(to: configuration, logger: logger, on: .shared)
    }

    /// Connects on a loop of the caller's choosing (tests that load a loop heavily use their own).
    static func connect(
        to configuration: RedisConfiguration, logger: Logger, on loop: EventLoop
    ) async throws(RedisError) -> Subscriber {
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
    /// ```swift
    /// let subscription = try await subscriber.subscribe(to: "orders", "payments")
    /// ```
    ///
    /// While the connection is down (reconnecting), the call waits for the reconnect, up to
    /// ``RedisConfiguration/connectTimeout``, then throws ``RedisError/Code/connectionClosed``.
    ///
    /// - Parameters:
    ///   - channels: channel names: text, or bytes (`[UInt8]`, `Data`, ``RedisName``).
    ///   - bufferingPolicy: what to drop when the consumer falls behind; ``BufferingPolicy/default`` keeps the
    ///     newest 10,000 messages.
    /// - Throws: ``RedisError`` (``RedisError/Code/permissionDenied`` when an ACL forbids a channel,
    ///   ``RedisError/Code/connectionClosed``, ``RedisError/Code/timeout``, ``RedisError/Code/cancelled``).
    public func subscribe(
        to channels: any RedisNameConvertible...,
        bufferingPolicy: BufferingPolicy = .default
    ) async throws(RedisError) -> Subscription {
        try await subscribe(ChannelKey.keys(channels: channels, patterns: [], shardChannels: []), bufferingPolicy)
    }

    /// Subscribes to glob patterns (`PSUBSCRIBE`: `*`, `?`, `[ae]`, `\*` for a literal star). Messages carry the
    /// matching ``Message/pattern``.
    ///
    /// - Throws: as ``subscribe(to:bufferingPolicy:)``.
    public func subscribe(
        toPatterns patterns: any RedisNameConvertible...,
        bufferingPolicy: BufferingPolicy = .default
    ) async throws(RedisError) -> Subscription {
        try await subscribe(ChannelKey.keys(channels: [], patterns: patterns, shardChannels: []), bufferingPolicy)
    }

    /// Subscribes to sharded channels (`SSUBSCRIBE`, Redis 7). Messages have ``Message/isSharded`` set.
    ///
    /// - Throws: as ``subscribe(to:bufferingPolicy:)``.
    public func subscribe(
        toShardChannels channels: any RedisNameConvertible...,
        bufferingPolicy: BufferingPolicy = .default
    ) async throws(RedisError) -> Subscription {
        try await subscribe(ChannelKey.keys(channels: [], patterns: [], shardChannels: channels), bufferingPolicy)
    }

    /// One subscription to channels, patterns and sharded channels together, given as arrays: its messages arrive in
    /// the order the server sent them, so a message matching both a channel and a pattern arrives twice, first as
    /// the channel's.
    ///
    /// - Throws: as ``subscribe(to:bufferingPolicy:)``, and ``RedisError/Code/invalidArgument`` when all three are
    ///   empty.
    public func subscribe(
        channels: [any RedisNameConvertible] = [],
        patterns: [any RedisNameConvertible] = [],
        shardChannels: [any RedisNameConvertible] = [],
        bufferingPolicy: BufferingPolicy = .default
    ) async throws(RedisError) -> Subscription {
        try await subscribe(
            ChannelKey.keys(channels: channels, patterns: patterns, shardChannels: shardChannels), bufferingPolicy)
    }

    /// Subscribes to `channels`, runs `body` with the subscription, then unsubscribes (and waits for the server's
    /// acknowledgement) however `body` ends: the subscription cannot outlive it.
    ///
    /// ```swift
    /// try await subscriber.subscribe(to: "orders") { subscription in
    ///     for try await message in subscription { try await handle(message) }
    /// }
    /// ```
    ///
    /// - Returns: what `body` returns.
    /// - Throws: as ``subscribe(to:bufferingPolicy:)``, or what `body` throws.
    public func subscribe<Result>(
        to channels: any RedisNameConvertible...,
        bufferingPolicy: BufferingPolicy = .default,
        isolation actor: isolated (any Actor)? = #isolation,
        _ body: (Subscription) async throws -> Result
    ) async throws -> Result {
        let subscription = try await subscribe(
            ChannelKey.keys(channels: channels, patterns: [], shardChannels: []), bufferingPolicy)
        return try await Self.scoped(subscription, body)
    }

    /// Subscribes to channels, patterns and sharded channels together, runs `body` with the subscription, then
    /// unsubscribes; see ``subscribe(to:bufferingPolicy:isolation:_:)``.
    public func subscribe<Result>(
        channels: [any RedisNameConvertible] = [],
        patterns: [any RedisNameConvertible] = [],
        shardChannels: [any RedisNameConvertible] = [],
        bufferingPolicy: BufferingPolicy = .default,
        isolation actor: isolated (any Actor)? = #isolation,
        _ body: (Subscription) async throws -> Result
    ) async throws -> Result {
        let subscription = try await subscribe(
            ChannelKey.keys(channels: channels, patterns: patterns, shardChannels: shardChannels), bufferingPolicy)
        return try await Self.scoped(subscription, body)
    }

    private static func scoped<Result>(
        _ subscription: Subscription,
        isolation actor: isolated (any Actor)? = #isolation,
        _ body: (Subscription) async throws -> Result
    ) async throws -> Result {
        do {
            let result = try await body(subscription)
            await subscription.unsubscribe()
            return result
        } catch {
            await subscription.unsubscribe()
            throw error
        }
    }

    /// Sends `PING` on the subscriber's connection, in order with its subscribes, and returns the round-trip time:
    /// a check that the connection and the server answer right now (the health check does this by itself; see
    /// ``RedisConfiguration/healthCheckInterval``).
    ///
    /// - Throws: ``RedisError/Code/connectionClosed`` while the connection is down,
    ///   ``RedisError/Code/timeout``, ``RedisError/Code/cancelled``.
    @discardableResult
    public func ping() async throws(RedisError) -> Duration {
        let start = ContinuousClock.now
        let pending = Pending<Void>()
        try await pending.wait { lifetime.core.execute { $0.ping(pending) } }
        return ContinuousClock.now - start
    }

    /// The number of subscriptions registered on the connection right now.
    func activeSubscriptionCount() async -> Int {
        await withCheckedContinuation { continuation in
            lifetime.core.execute { continuation.resume(returning: $0.subscriptionCount) }
        }
    }

    private func subscribe(_ keys: [ChannelKey], _ policy: BufferingPolicy) async throws(RedisError) -> Subscription {
        guard !keys.isEmpty else { throw RedisError(.invalidArgument, "subscribe needs at least one channel or pattern") }
        let sink = SubscriptionSink(keys: keys, policy: policy)
        let handle = SubscriptionHandle(sink: sink, owner: lifetime)  // ends (unsubscribes) if we fail below
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

    /// The connection's state and changes: first where it stands now (the last event so far: connected,
    /// disconnected, reconnecting, reconnected), then every change. Each call returns a new sequence; it ends when
    /// the subscriber is closed.
    public func events() -> AsyncStream<ConnectionEvent> { lifetime.core.connection.events.stream() }
}

/// Keeps a subscriber's connection open while its `Subscriber` or any of its subscriptions exists.
final class SubscriberLifetime: SubscriptionOwner {
    let core: SubscriberCore

    init(core: SubscriberCore) {
        self.core = core
    }

    deinit {
        core.execute { core in core.close {} }
    }
}

extension SubscriberLifetime {
    func addKeys(_ keys: [ChannelKey], to sink: SubscriptionSink, _ pending: Pending<Void>) {
        core.execute { $0.addKeys(keys, to: sink, pending) }
    }

    func removeKeys(_ keys: [ChannelKey], from sink: SubscriptionSink, completion: @escaping @Sendable () -> Void) {
        core.execute { $0.removeKeys(keys, from: sink, completion: completion) }
    }

    func remove(_ sink: SubscriptionSink, completion: @escaping @Sendable () -> Void) {
        core.execute { $0.remove(sink, completion: completion) }
    }
}
