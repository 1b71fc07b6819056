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
/// try await publisher.publish(json: Notification(id: 1, text: "Hi", sentAt: .now), to: "notifications")
/// ```
///
/// Channel introspection (`PUBSUB CHANNELS`, `NUMSUB`, ...) is on the ``connection``:
/// `publisher.connection.pubsubNumberOfSubscribers(["notifications"])`.
public final class Publisher: Sendable {
    /// The command connection underneath, for anything else (e.g. `GET`, `XADD`).
    public let connection: RedisConnection
    /// The encoder for ``publish(json:to:encoder:)`` when none is passed.
    public let encoder: JSONEncoder
    /// What a publish does when the connection is down.
    public let retry: PublishRetry
    /// The trim of each stream set with ``setTrim(_:for:)``.
    let streamTrims = Locked<[RedisName: StreamTrim]>([:])

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
    ) async throws(RedisError) -> Publisher {
        Publisher(
            connection: try await RedisConnection.connect(to: configuration, logger: logger), encoder: encoder, retry: retry)
    }

    /// The connection's state and changes; see ``RedisConnection/events()``.
    public func events() -> AsyncStream<ConnectionEvent> { connection.events() }

    /// Sends a PUBLISH or SPUBLISH, and per ``retry`` sends it again after a reconnect when it failed because the
    /// connection was down. Not generic: the public overloads are inlined into their callers (where the channel's
    /// type is known) and only convert.
    @usableFromInline
    func send(_ verb: StaticString, _ channel: RedisArgument, _ message: RedisArgument) async throws(RedisError) -> Int {
        guard case .whileReconnecting(let limit) = retry.base else {
            return try await connection.publish(verb, channel, message)  // no retry: no closure, no extra frame
        }
        return try await retrying(upTo: limit) { () async throws(RedisError) in
            try await connection.publish(verb, channel, message)
        }
    }

    /// One PUBLISH or SPUBLISH per message, written together, waited for once; retried as ``send(_:_:_:)``.
    @usableFromInline
    func sendBatch(
        _ verb: StaticString, _ channel: RedisArgument, _ messages: [RedisArgument]
    ) async throws(RedisError) -> [Int] {
        guard case .whileReconnecting(let limit) = retry.base else {
            return try await connection.publish(verb, channel, contentsOf: messages)
        }
        return try await retrying(upTo: limit) { () async throws(RedisError) in
            try await connection.publish(verb, channel, contentsOf: messages)
        }
    }

    /// Encodes `value` as JSON with `encoder` (or the publisher's).
    @usableFromInline
    func json(_ value: some Encodable, _ encoder: JSONEncoder?) throws(RedisError) -> RedisArgument {
        try Self.json(value, encoder ?? self.encoder)
    }

    /// `value` as JSON, or the error that says nothing was sent (shared with ``ClusterPublisher``).
    static func json(_ value: some Encodable, _ encoder: JSONEncoder) throws(RedisError) -> RedisArgument {
        do {
            return RedisArgument(try encoder.encode(value))
        } catch {
            throw RedisError(.invalidArgument, "cannot encode a \(type(of: value)) as JSON (nothing was sent): \(error)")
        }
    }

    /// Runs `body`, and runs it again after a reconnect when it failed because the connection was down, until `limit`.
    func retrying<Result>(
        upTo limit: Duration, _ body: () async throws(RedisError) -> Result
    ) async throws(RedisError) -> Result {
        let deadline = ContinuousClock.now + limit
        while true {
            do {
                return try await body()
            } catch where error.code == .connectionClosed && ContinuousClock.now < deadline {
                guard try await connection.waitUntilConnected(before: deadline) else { throw error }
            }
        }
    }

    /// The configuration this publisher connected with.
    public var configuration: RedisConfiguration { connection.configuration }

    /// The event-loop thread as a task executor; see ``RedisConnection/taskExecutor``. Publishing tasks that prefer
    /// it reach about twice the throughput of tasks on the default executor (see the README's performance table).
    public var taskExecutor: any TaskExecutor { connection.taskExecutor }

    // MARK: Publishing

    /// Publishes `message` byte for byte (`PUBLISH`): text as its UTF-8, bytes as they are.
    ///
    /// ```swift
    /// try await publisher.publish("Hello", to: "notifications")
    /// try await publisher.publish([0x00, 0xFF], to: "raw")            // two bytes, never the JSON text [0,255]
    /// try await publisher.publish(Array(text.utf8), to: "raw")
    /// ```
    ///
    /// Cancellation is checked when the call starts; once sent, the message is delivered whatever the caller does,
    /// so the call waits for the count.
    ///
    /// - Returns: the number of subscribers that received it, as the server counts them.
    /// - Throws: ``RedisError``: ``RedisError/Code/connectionClosed`` while the connection is down (see ``retry``),
    ///   ``RedisError/Code/timeout``, ``RedisError/Code/overloaded``, ``RedisError/Code/cancelled``, ...
    @inlinable @discardableResult
    public func publish(_ message: some RedisPayload, to channel: some RedisNameConvertible) async throws(RedisError) -> Int {
        try await send("PUBLISH", channel.redisArgument, message.redisArgument)
    }

    /// Publishes `value` encoded as JSON, with `encoder` or else the publisher's ``encoder``.
    ///
    /// ```swift
    /// try await publisher.publish(json: Notification(id: 1, text: "Hi"), to: "notifications")
    /// ```
    ///
    /// - Throws: ``RedisError/Code/invalidArgument`` when the value does not encode (nothing is sent), else as
    ///   ``publish(_:to:)``.
    @discardableResult
    public func publish(
        json value: some Encodable,
        to channel: some RedisNameConvertible,
        encoder: JSONEncoder? = nil
    ) async throws(RedisError) -> Int {
        try await send("PUBLISH", channel.redisArgument, json(value, encoder))
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
    /// - Throws: ``RedisError``: ``RedisError/Code/cancelled`` before sending anything; any other once every message
    ///   is answered or failed (some messages may have been delivered, say when the connection dropped midway).
    @inlinable @discardableResult
    public func publish<Messages: Sequence>(
        contentsOf messages: Messages,
        to channel: some RedisNameConvertible
    ) async throws(RedisError) -> [Int] where Messages.Element: RedisPayload {
        try await sendBatch("PUBLISH", channel.redisArgument, messages.map(\.redisArgument))
    }

    // MARK: Sharded channels

    /// Publishes `message` to a sharded channel (`SPUBLISH`, Redis 7); see ``publish(_:to:)``.
    @inlinable @discardableResult
    public func publish(_ message: some RedisPayload, toShard channel: some RedisNameConvertible) async throws(RedisError) -> Int {
        try await send("SPUBLISH", channel.redisArgument, message.redisArgument)
    }

    /// Publishes `value` as JSON to a sharded channel (`SPUBLISH`); see ``publish(json:to:encoder:)``.
    @discardableResult
    public func publish(
        json value: some Encodable,
        toShard channel: some RedisNameConvertible,
        encoder: JSONEncoder? = nil
    ) async throws(RedisError) -> Int {
        try await send("SPUBLISH", channel.redisArgument, json(value, encoder))
    }

    /// Publishes many messages to one sharded channel in one write (`SPUBLISH`); see ``publish(contentsOf:to:)``.
    @inlinable @discardableResult
    public func publish<Messages: Sequence>(
        contentsOf messages: Messages,
        toShard channel: some RedisNameConvertible
    ) async throws(RedisError) -> [Int] where Messages.Element: RedisPayload {
        try await sendBatch("SPUBLISH", channel.redisArgument, messages.map(\.redisArgument))
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
