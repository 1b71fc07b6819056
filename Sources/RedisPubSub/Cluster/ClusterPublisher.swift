#if canImport(FoundationEssentials)
public import FoundationEssentials
#else
public import Foundation
#endif
public import Logging

/// Publishes to a Redis Cluster: `SPUBLISH` to the primary serving the channel's slot, pipelined per node, following
/// `-MOVED` and `-ASK` redirections; `PUBLISH` to any node (the cluster broadcasts it to every node). Share one
/// publisher between many tasks.
///
/// ```swift
/// let publisher = try await ClusterPublisher.connect(to: try RedisClusterConfiguration(urls: ["redis://10.0.0.1:6379"]))
/// try await publisher.publish("shipped", toShard: "orders:{eu}")
/// ```
///
/// It opens a command connection to a primary when it first publishes there. A `-MOVED` answer corrects its map at
/// once (the publish is sent again to the node named) and fetches the whole map in the background; `-ASK` (a slot
/// being migrated) sends `ASKING` and the command together to the node named.
public final class ClusterPublisher: Sendable {
    /// The configuration this publisher connected with.
    public let configuration: RedisClusterConfiguration
    /// The encoder for ``publish(json:toShard:encoder:)`` when none is passed.
    public let encoder: JSONEncoder
    /// What a publish does while its slot's primary is unreachable (during a failover, say).
    public let retry: PublishRetry
    let router: ClusterRouter

    private init(configuration: RedisClusterConfiguration, encoder: JSONEncoder, retry: PublishRetry, router: ClusterRouter) {
        self.configuration = configuration
        self.encoder = encoder
        self.retry = retry
        self.router = router
    }

    /// Learns the cluster's map from the first seed that answers.
    ///
    /// - Parameters:
    ///   - configuration: the seeds and the settings of every node's connection.
    ///   - encoder: the default JSON encoder for the `json:` overloads.
    ///   - retry: ``PublishRetry/never`` (the default) fails a publish whose node is unreachable at once;
    ///     ``PublishRetry/whileReconnecting(upTo:)`` fetches the map and tries again (the failed-over primary, or the
    ///     node back) until the limit, which may deliver a message twice.
    ///   - logger: where map changes and connection changes are logged; nothing by default.
    /// - Throws: as ``ClusterSubscriber/connect(to:logger:)``.
    public static func connect(
        to configuration: RedisClusterConfiguration,
        encoder: JSONEncoder = JSONEncoder(),
        retry: PublishRetry = .never,
        logger: Logger = RedisConnection.disabledLogger
    ) async throws(RedisError) -> ClusterPublisher {
        try configuration.validate()
        let router = try await ClusterRouter.connect(to: configuration, logger: logger)
        return ClusterPublisher(configuration: configuration, encoder: encoder, retry: retry, router: router)
    }

    /// `SPUBLISH` of `message` (bytes as they are) on the primary serving `channel`'s slot.
    ///
    /// - Returns: the number of clients that received it on that node (subscribers on its replicas are not counted).
    /// - Throws: ``RedisError`` (``RedisError/Code/connectionClosed`` when the node is unreachable and ``retry``
    ///   allows no more, ``RedisError/Code/timeout``, ``RedisError/Code/serverError`` with the server's message).
    @discardableResult
    public func publish(_ message: some RedisPayload, toShard channel: some RedisNameConvertible) async throws(RedisError) -> Int {
        let channel = channel.redisArgument
        return try await publish("SPUBLISH", channel, message.redisArgument, slot: ClusterSlot.of(channel))
    }

    /// `SPUBLISH` of `value` encoded as JSON.
    ///
    /// - Throws: ``RedisError/Code/invalidArgument`` when `value` cannot be encoded (nothing is sent), or as
    ///   ``publish(_:toShard:)``.
    @discardableResult
    public func publish(
        json value: some Encodable, toShard channel: some RedisNameConvertible, encoder: JSONEncoder? = nil
    ) async throws(RedisError) -> Int {
        try await publish(try json(value, encoder), toShard: channel)
    }

    /// Many `SPUBLISH`es to one sharded channel, written together to its slot's primary and answered in order: the
    /// per-message cost of a round trip is gone. Commands that meet a slot migration (`-MOVED`, `-ASK`) are sent
    /// again where the answer says; the others are not sent twice.
    ///
    /// - Returns: each message's receiver count on that node, in order.
    /// - Throws: as ``publish(_:toShard:)``, once every message is answered (some may have been delivered).
    @discardableResult
    public func publish<Messages: Sequence>(
        contentsOf messages: Messages, toShard channel: some RedisNameConvertible
    ) async throws(RedisError) -> [Int] where Messages.Element: RedisPayload {
        let channel = channel.redisArgument
        return try await router.publish(
            "SPUBLISH", channel, contentsOf: messages.map(\.redisArgument), slot: ClusterSlot.of(channel), retry: retry)
    }

    /// Many `PUBLISH`es to one classic channel, written together to one node; see ``publish(_:to:)`` for what the
    /// counts mean.
    ///
    /// - Throws: as ``publish(contentsOf:toShard:)``.
    @discardableResult
    public func publish<Messages: Sequence>(
        contentsOf messages: Messages, to channel: some RedisNameConvertible
    ) async throws(RedisError) -> [Int] where Messages.Element: RedisPayload {
        try await router.publish("PUBLISH", channel.redisArgument, contentsOf: messages.map(\.redisArgument), slot: nil, retry: retry)
    }

    /// `PUBLISH` of `message` to a classic channel, through one node: the cluster broadcasts it to every node.
    ///
    /// - Returns: the number of clients that received it **on the node it went to** only: subscribers on other nodes
    ///   receive it too, uncounted. For an exact count, use sharded channels.
    /// - Throws: as ``publish(_:toShard:)``.
    @discardableResult
    public func publish(_ message: some RedisPayload, to channel: some RedisNameConvertible) async throws(RedisError) -> Int {
        try await publish("PUBLISH", channel.redisArgument, message.redisArgument, slot: nil)
    }

    /// `PUBLISH` of `value` encoded as JSON; see ``publish(_:to:)``.
    @discardableResult
    public func publish(
        json value: some Encodable, to channel: some RedisNameConvertible, encoder: JSONEncoder? = nil
    ) async throws(RedisError) -> Int {
        try await publish(try json(value, encoder), to: channel)
    }

    /// Sends a command to the primary serving its keys' slot, following redirections: `GET`, `XADD`, `EVAL`, ...
    /// The keys are found as the server finds them: from its command table (`COMMAND INFO`, asked once per command
    /// name), or with `COMMAND GETKEYS` for commands whose keys move with their arguments (`EVAL`, `XREAD`). A command
    /// without keys goes to any node. The rules of ``RedisConnection/send(_:_:)`` apply.
    ///
    /// ```swift
    /// try await publisher.send("SET", "user:{42}:name", "Ada")
    /// try await publisher.send("MGET", "user:{42}:name", "user:{42}:mail")  // one slot: one hash tag
    /// ```
    ///
    /// - Throws: ``RedisError/Code/invalidArgument`` when the keys are in different hash slots (nothing is sent;
    ///   the server would refuse it with `CROSSSLOT`), or as ``RedisConnection/send(_:_:)``.
    @discardableResult
    public func send<each Argument: RedisArgumentConvertible>(
        _ command: String,
        _ arguments: repeat each Argument
    ) async throws(RedisError) -> RedisValue {
        try await send(RedisConnection.command(command, repeat each arguments))
    }

    /// Sends one command, given as an array whose first element is the command name, routed by its keys.
    ///
    /// - Throws: as ``send(_:_:)``.
    @discardableResult
    public func send(_ command: [RedisArgument]) async throws(RedisError) -> RedisValue {
        try CommandRules.checkShared(command)
        let slot = try await router.slot(of: command, retry: retry)
        return try await router.send(encoded: RESP.encode(command), slot: slot, retry: retry)
    }

    /// Sends a command to the primary serving `key`'s slot (following redirections), whatever the command's own
    /// keys: for commands the server's table cannot route (a module's, say). The rules of
    /// ``RedisConnection/send(_:_:)`` apply.
    ///
    /// - Throws: as ``RedisConnection/send(_:_:)``.
    @discardableResult
    public func send(_ command: [RedisArgument], routedBy key: some RedisNameConvertible) async throws(RedisError) -> RedisValue {
        try CommandRules.checkShared(command)
        return try await router.send(command, routedBy: key.redisArgument.bytes, retry: retry)
    }

    /// How the publisher reaches the cluster: map changes and refresh failures.
    public func events() -> AsyncStream<ClusterEvent> { router.events.stream() }

    /// Closes every connection after the publishes in flight are answered.
    public func close() async {
        await router.close()
    }

    /// Encoded in one allocation, as on one node, and routed by the slot computed in place.
    private func publish(
        _ verb: StaticString, _ channel: RedisArgument, _ message: RedisArgument, slot: Int?
    ) async throws(RedisError) -> Int {
        try RedisConnection.integer(verb, try await router.send(encoded: RESP.encode(verb, channel, message), slot: slot, retry: retry))
    }

    private func json(_ value: some Encodable, _ encoder: JSONEncoder?) throws(RedisError) -> RedisArgument {
        try Publisher.json(value, encoder ?? self.encoder)
    }
}
