public import Logging
import Synchronization

/// Receives Pub/Sub messages from a Redis Cluster: sharded channels (`SSUBSCRIBE`, Redis 7) on the primary that
/// serves each channel's slot, classic channels and patterns on one node (the cluster broadcasts them to every node).
///
/// ```swift
/// let cluster = try RedisClusterConfiguration(urls: ["redis://10.0.0.1:6379"])
/// let subscriber = try await ClusterSubscriber.connect(to: cluster)
/// let subscription = try await subscriber.subscribe(toShardChannels: "orders:{eu}", "orders:{us}")
/// for try await message in subscription { print(message.string) }
/// ```
///
/// It opens one connection per primary that serves a subscribed sharded channel, when the first such channel is
/// subscribed, and closes it when the last one ends; each channel is subscribed with its own `SSUBSCRIBE`, so a
/// subscription may span any slots (no `CROSSSLOT`). When a slot migrates or a primary fails over, the server ends
/// the channel's subscription (or the connection drops): the channel is subscribed again on the slot's new primary
/// and confirmed from its acknowledgement, and each subscription holding it reports the gap through
/// ``Subscription/events()`` (``SubscriptionEvent/disconnected(at:cause:)``, then
/// ``SubscriptionEvent/resubscribed(at:gap:)``); subscriptions on other slots are not affected.
///
/// Subscriptions are the same ``Subscription`` values a ``Subscriber`` returns, with the same rules.
public final class ClusterSubscriber: Sendable {
    let lifetime: ClusterSubscriberLifetime

    private init(lifetime: ClusterSubscriberLifetime) {
        self.lifetime = lifetime
    }

    /// The configuration this subscriber connected with.
    public var configuration: RedisClusterConfiguration { lifetime.core.configuration }

    /// The event-loop thread every node's connection runs on, as a task executor; see
    /// ``RedisConnection/taskExecutor``.
    public var taskExecutor: any TaskExecutor { lifetime.core.loop }

    /// Learns the cluster's map from the first seed that answers; connections to the nodes are opened as
    /// subscriptions need them.
    ///
    /// - Throws: ``RedisError``: ``RedisError/Code/invalidConfiguration`` for a bad configuration or a seed that is
    ///   not a cluster node, ``RedisError/Code/authenticationFailed``, ``RedisError/Code/connectionClosed`` when no
    ///   seed answered (naming why each failed).
    public static func connect(
        to configuration: RedisClusterConfiguration,
        logger: Logger = RedisConnection.disabledLogger
    ) async throws(RedisError) -> ClusterSubscriber {
        try configuration.validate()
        let (source, map) = try await ClusterTopologySource.start(configuration, logger: logger)
        let core = ClusterSubscriberCore(
            configuration: configuration, topology: map, source: source, logger: logger, loop: .shared)
        core.execute { $0.start() }
        return ClusterSubscriber(lifetime: ClusterSubscriberLifetime(core: core))
    }

    /// Subscribes to sharded channels (`SSUBSCRIBE`), each on its slot's primary, and returns once every one is
    /// confirmed. Messages have ``Message/isSharded`` set.
    ///
    /// - Throws: ``RedisError`` (``RedisError/Code/permissionDenied`` when an ACL forbids a channel,
    ///   ``RedisError/Code/connectionClosed`` when a channel could not be confirmed within
    ///   ``RedisConfiguration/connectTimeout`` of the first seed, ``RedisError/Code/cancelled``).
    public func subscribe(
        toShardChannels channels: any RedisNameConvertible...,
        bufferingPolicy: BufferingPolicy = .default
    ) async throws(RedisError) -> Subscription {
        try await subscribe(ChannelKey.keys(channels: [], patterns: [], shardChannels: channels), bufferingPolicy)
    }

    /// Subscribes to classic channels (`SUBSCRIBE`) on one node of the cluster, which receives every node's
    /// `PUBLISH`; if that node is lost, they move to another one.
    ///
    /// - Throws: as ``subscribe(toShardChannels:bufferingPolicy:)``.
    public func subscribe(
        to channels: any RedisNameConvertible...,
        bufferingPolicy: BufferingPolicy = .default
    ) async throws(RedisError) -> Subscription {
        try await subscribe(ChannelKey.keys(channels: channels, patterns: [], shardChannels: []), bufferingPolicy)
    }

    /// Subscribes to glob patterns (`PSUBSCRIBE`) on one node of the cluster, as for classic channels.
    ///
    /// - Throws: as ``subscribe(toShardChannels:bufferingPolicy:)``.
    public func subscribe(
        toPatterns patterns: any RedisNameConvertible...,
        bufferingPolicy: BufferingPolicy = .default
    ) async throws(RedisError) -> Subscription {
        try await subscribe(ChannelKey.keys(channels: [], patterns: patterns, shardChannels: []), bufferingPolicy)
    }

    /// One subscription to classic channels, patterns and sharded channels together.
    ///
    /// - Throws: as ``subscribe(toShardChannels:bufferingPolicy:)``, and ``RedisError/Code/invalidArgument`` when
    ///   all three are empty.
    public func subscribe(
        channels: [any RedisNameConvertible] = [],
        patterns: [any RedisNameConvertible] = [],
        shardChannels: [any RedisNameConvertible] = [],
        bufferingPolicy: BufferingPolicy = .default
    ) async throws(RedisError) -> Subscription {
        try await subscribe(
            ChannelKey.keys(channels: channels, patterns: patterns, shardChannels: shardChannels), bufferingPolicy)
    }

    /// Subscribes to sharded channels, runs `body` with the subscription, then unsubscribes (and waits for the
    /// acknowledgements) however `body` ends.
    ///
    /// - Returns: what `body` returns.
    /// - Throws: as ``subscribe(toShardChannels:bufferingPolicy:)``, or what `body` throws.
    public func subscribe<Result>(
        toShardChannels channels: any RedisNameConvertible...,
        bufferingPolicy: BufferingPolicy = .default,
        isolation actor: isolated (any Actor)? = #isolation,
        _ body: (Subscription) async throws -> Result
    ) async throws -> Result {
        let subscription = try await subscribe(
            ChannelKey.keys(channels: [], patterns: [], shardChannels: channels), bufferingPolicy)
        do {
            let result = try await body(subscription)
            await subscription.unsubscribe()
            return result
        } catch {
            await subscription.unsubscribe()
            throw error
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

    /// How the subscriber reaches the cluster: map changes, nodes lost and reconnected, channels moved to another
    /// node. Each call returns a new sequence; it ends when the subscriber is closed.
    public func events() -> AsyncStream<ClusterEvent> { lifetime.core.events.stream() }

    /// Message-shaped pushes too malformed to deliver, dropped and counted (see ``Subscriber/discardedPushCount``).
    public var discardedPushCount: Int { lifetime.core.discardedPushes.load(ordering: .relaxed) }

    /// Closes gracefully: unsubscribes everything, waits for the acknowledgements (delivering what arrives before
    /// them), closes every connection; every subscription's loop then ends normally. Cancelling the calling task
    /// closes at once.
    public func close() async {
        let core = lifetime.core
        await withTaskCancellationHandler {
            await withCheckedContinuation { (continuation: CheckedContinuation<Void, Never>) in
                core.execute { core in core.close { continuation.resume() } }
            }
        } onCancel: {
            core.execute { $0.forceClose() }
        }
    }

    /// The nodes it holds a connection to right now (tests).
    func connectedNodes() async -> [ClusterNodeAddress] {
        await withCheckedContinuation { continuation in
            lifetime.core.execute { continuation.resume(returning: $0.connectedNodes) }
        }
    }

    /// Whether a handover holds `channel` (sharded) confirmed on the node importing its slot, before the flip (tests).
    func handoverConfirmed(shardChannel channel: String) async -> Bool {
        await withCheckedContinuation { continuation in
            lifetime.core.execute {
                continuation.resume(returning: $0.handoverConfirmed(ChannelKey(kind: .shardChannel, name: Array(channel.utf8))))
            }
        }
    }

    /// Handover connections open (tests).
    func handoverCount() async -> Int {
        await withCheckedContinuation { continuation in
            lifetime.core.execute { continuation.resume(returning: $0.handoverCount) }
        }
    }

    /// The node `channel` (sharded) is subscribed on (tests).
    func node(ofShardChannel channel: String) async -> ClusterNodeAddress? {
        await withCheckedContinuation { continuation in
            lifetime.core.execute {
                continuation.resume(returning: $0.node(of: ChannelKey(kind: .shardChannel, name: Array(channel.utf8))))
            }
        }
    }
}

/// Keeps a cluster subscriber's connections open while its `ClusterSubscriber` or any of its subscriptions exists.
final class ClusterSubscriberLifetime: SubscriptionOwner {
    let core: ClusterSubscriberCore

    init(core: ClusterSubscriberCore) {
        self.core = core
    }

    deinit {
        core.execute { core in core.close {} }
    }

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
