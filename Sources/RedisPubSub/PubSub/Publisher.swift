#if canImport(FoundationEssentials)
public import FoundationEssentials
#else
public import Foundation
#endif
public import Logging

/// Publishes messages. Share one publisher between many tasks: their PUBLISH commands are pipelined on its
/// connection, not serialised on round trips.
///
/// ```swift
/// let publisher = try await Publisher.connect(to: .fromEnvironment())
/// let receivers = try await publisher.publish("Hello", to: "notifications")
/// try await publisher.publish(Notification(id: 1, text: "Hi", sentAt: .now), to: "notifications")
/// ```
public final class Publisher: Sendable {
    /// The command connection underneath, for anything else (e.g. `GET`, `XADD`).
    public let connection: RedisConnection
    /// The encoder for ``publish(_:to:encoder:)`` when none is passed.
    public let encoder: JSONEncoder
    /// What a publish does when the connection is down.
    public let retry: PublishRetry

    private init(connection: RedisConnection, encoder: JSONEncoder, retry: PublishRetry) {
        self.connection = connection
        self.encoder = encoder
        self.retry = retry
    }

    /// Connects a publisher.
    ///
    /// - Parameters:
    ///   - configuration: where and how to connect.
    ///   - encoder: the default JSON encoder for `Encodable` messages.
    ///   - retry: ``PublishRetry/never`` (the default) fails a publish at once while the connection is down;
    ///     ``PublishRetry/whileReconnecting(upTo:)`` waits for the reconnect and sends it again.
    ///   - logger: where connects and disconnects are logged; nothing by default.
    /// - Throws: as ``RedisConnection/connect(to:logger:)``.
    public static func connect(
        to configuration: RedisConfiguration,
        encoder: JSONEncoder = JSONEncoder(),
        retry: PublishRetry = .never,
        logger: Logger = RedisConnection.disabledLogger
    ) async throws -> Publisher {
        Publisher(
            connection: try await RedisConnection.connect(to: configuration, logger: logger), encoder: encoder, retry: retry)
    }

    /// The connection's changes from now on; see ``RedisConnection/events``.
    public var events: AsyncStream<ConnectionEvent> { connection.events }

    /// Sends a PUBLISH or SPUBLISH, and per ``retry`` sends it again after a reconnect when it failed because the
    /// connection was down. Not generic: the public overloads are inlined into their callers (where the channel's
    /// type is known) and only convert.
    @usableFromInline
    func send(_ verb: StaticString, _ channel: RedisArgument, _ message: RedisArgument) async throws -> Int {
        guard case .whileReconnecting(let limit) = retry.base else {
            return try await connection.publish(verb, channel, message)  // no retry: no closure, no extra frame
        }
        return try await retrying(upTo: limit) { try await connection.publish(verb, channel, message) }
    }

    /// One PUBLISH or SPUBLISH per message, written together, waited for once; retried as ``send(_:_:_:)``.
    @usableFromInline
    func sendBatch(_ verb: StaticString, _ channel: RedisArgument, _ messages: [RedisArgument]) async throws -> [Int] {
        guard case .whileReconnecting(let limit) = retry.base else {
            return try await connection.publish(verb, channel, contentsOf: messages)
        }
        return try await retrying(upTo: limit) { try await connection.publish(verb, channel, contentsOf: messages) }
    }

    /// Runs `body`, and runs it again after a reconnect when it failed because the connection was down, until `limit`.
    private func retrying<Result>(upTo limit: Duration, _ body: () async throws -> Result) async throws -> Result {
        let deadline = ContinuousClock.now + limit
        while true {
            do {
                return try await body()
            } catch let error as RedisError where error.code == .connectionClosed && ContinuousClock.now < deadline {
                guard try await connection.waitUntilConnected(before: deadline) else { throw error }
            }
        }
    }

    /// The configuration this publisher connected with.
    public var configuration: RedisConfiguration { connection.configuration }

    /// The event-loop thread as a task executor; see ``RedisConnection/taskExecutor``. Publishing tasks that prefer
    /// it reach about twice the throughput of tasks on the default executor (see the README's performance table).
    public var taskExecutor: any TaskExecutor { connection.taskExecutor }

    // MARK: PUBLISH

    /// Publishes text (as UTF-8).
    ///
    /// - Returns: the number of subscribers that received it, as the server counts them.
    /// - Throws: ``RedisError``, `CancellationError`.
    @inlinable @discardableResult
    public func publish(_ message: String, to channel: some RedisArgumentConvertible) async throws -> Int {
        try await send("PUBLISH", channel.redisArgument, message.redisArgument)
    }

    /// Publishes bytes as they are.
    @inlinable @discardableResult
    public func publish(_ message: [UInt8], to channel: some RedisArgumentConvertible) async throws -> Int {
        try await send("PUBLISH", channel.redisArgument, message.redisArgument)
    }

    /// Publishes the bytes of `message`.
    @inlinable @discardableResult
    public func publish(_ message: Data, to channel: some RedisArgumentConvertible) async throws -> Int {
        try await send("PUBLISH", channel.redisArgument, message.redisArgument)
    }

    /// Publishes `value` encoded as JSON with `encoder` (default: the publisher's ``encoder``).
    ///
    /// - Throws: the encoder's error (nothing is sent), ``RedisError``, `CancellationError`.
    @discardableResult
    public func publish<Value: Encodable>(
        _ value: Value,
        to channel: some RedisArgumentConvertible,
        encoder: JSONEncoder? = nil
    ) async throws -> Int {
        try await send("PUBLISH", channel.redisArgument, (encoder ?? self.encoder).encode(value).redisArgument)
    }

    /// Publishes many messages to one channel in one write, waiting once for all the replies: the fastest way to
    /// send a burst. Each message is its own PUBLISH, so subscribers see them one by one, in this order.
    ///
    /// ```swift
    /// let counts = try await publisher.publish(contentsOf: events.map(\.description), to: "events")
    /// ```
    ///
    /// The encoded commands are held in one buffer until written, and share one command timeout counted from the
    /// write: split very large bursts (millions of messages) into batches of some thousands. Cancellation works as
    /// for a single publish: checked when the call starts. With ``PublishRetry/whileReconnecting(upTo:)``, a batch cut
    /// off by a disconnect is sent again in full (the messages that had arrived arrive twice).
    ///
    /// - Returns: each message's receiver count, in order.
    /// - Throws: `CancellationError` before sending anything; ``RedisError`` once every message is answered or
    ///   failed (some messages may have been delivered, say when the connection dropped midway).
    @inlinable @discardableResult
    public func publish<Messages: Sequence>(
        contentsOf messages: Messages,
        to channel: some RedisArgumentConvertible
    ) async throws -> [Int] where Messages.Element: RedisArgumentConvertible {
        try await sendBatch("PUBLISH", channel.redisArgument, messages.map(\.redisArgument))
    }

    /// Publishes many messages to one sharded channel in one write (`SPUBLISH`); see ``publish(contentsOf:to:)``.
    @inlinable @discardableResult
    public func publish<Messages: Sequence>(
        contentsOf messages: Messages,
        toShard channel: some RedisArgumentConvertible
    ) async throws -> [Int] where Messages.Element: RedisArgumentConvertible {
        try await sendBatch("SPUBLISH", channel.redisArgument, messages.map(\.redisArgument))
    }

    // MARK: SPUBLISH

    /// Publishes text to a sharded channel (`SPUBLISH`, Redis 7).
    @inlinable @discardableResult
    public func publish(_ message: String, toShard channel: some RedisArgumentConvertible) async throws -> Int {
        try await send("SPUBLISH", channel.redisArgument, message.redisArgument)
    }

    /// Publishes bytes to a sharded channel (`SPUBLISH`).
    @inlinable @discardableResult
    public func publish(_ message: [UInt8], toShard channel: some RedisArgumentConvertible) async throws -> Int {
        try await send("SPUBLISH", channel.redisArgument, message.redisArgument)
    }

    /// Publishes the bytes of `message` to a sharded channel (`SPUBLISH`).
    @inlinable @discardableResult
    public func publish(_ message: Data, toShard channel: some RedisArgumentConvertible) async throws -> Int {
        try await send("SPUBLISH", channel.redisArgument, message.redisArgument)
    }

    /// Publishes `value` as JSON to a sharded channel (`SPUBLISH`).
    @discardableResult
    public func publish<Value: Encodable>(
        _ value: Value,
        toShard channel: some RedisArgumentConvertible,
        encoder: JSONEncoder? = nil
    ) async throws -> Int {
        try await send("SPUBLISH", channel.redisArgument, (encoder ?? self.encoder).encode(value).redisArgument)
    }

    // MARK: Introspection

    /// `PUBSUB CHANNELS [pattern]`; see ``RedisConnection/pubsubChannels(matching:)``.
    public func channels(matching pattern: (any RedisArgumentConvertible)? = nil) async throws -> [String] {
        try await connection.pubsubChannels(matching: pattern)
    }

    /// `PUBSUB NUMSUB`; see ``RedisConnection/pubsubNumberOfSubscribers(_:)``.
    public func numberOfSubscribers(_ channels: [any RedisArgumentConvertible]) async throws -> [String: Int] {
        try await connection.pubsubNumberOfSubscribers(channels)
    }

    /// `PUBSUB NUMPAT`; see ``RedisConnection/pubsubNumberOfPatterns()``.
    public func numberOfPatterns() async throws -> Int {
        try await connection.pubsubNumberOfPatterns()
    }

    /// `PUBSUB SHARDCHANNELS [pattern]`; see ``RedisConnection/pubsubShardChannels(matching:)``.
    public func shardChannels(matching pattern: (any RedisArgumentConvertible)? = nil) async throws -> [String] {
        try await connection.pubsubShardChannels(matching: pattern)
    }

    /// `PUBSUB SHARDNUMSUB`; see ``RedisConnection/pubsubShardNumberOfSubscribers(_:)``.
    public func shardNumberOfSubscribers(_ channels: [any RedisArgumentConvertible]) async throws -> [String: Int] {
        try await connection.pubsubShardNumberOfSubscribers(channels)
    }

    /// Closes the connection after in-flight publishes are answered.
    ///
    public func close() async {
        await connection.close()
    }
}

/// What a ``Publisher`` does with a publish while its connection is down (between a disconnect and the reconnect).
public struct PublishRetry: Sendable, Hashable {
    enum Base: Hashable, Sendable {
        case never
        case whileReconnecting(Duration)
    }
    let base: Base

    /// Fail at once with ``RedisError/Code/connectionClosed``: the caller decides. The default.
    public static let never = PublishRetry(base: .never)

    /// Wait up to `limit` for the connection to come back and publish again. A publish that was in flight when the
    /// connection dropped may have reached the server already, so this can deliver a message twice.
    public static func whileReconnecting(upTo limit: Duration) -> PublishRetry {
        PublishRetry(base: .whileReconnecting(limit))
    }
}
