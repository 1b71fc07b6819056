public import ServiceLifecycle

extension Subscriber: Service {
    /// Runs until the service group shuts down gracefully (or this task is cancelled), then closes gracefully:
    /// unsubscribes, delivers what already arrived, and ends every subscription's loop normally.
    ///
    /// - Throws: the ``RedisError`` that closed the connection for good (a changed password, say), if that happens
    ///   first, so the service group learns of it.
    public func run() async throws(RedisError) {
        try await runUntilShutdown(events: events()) { await self.close() }
    }
}

extension Publisher: Service {
    /// Runs until the service group shuts down gracefully (or this task is cancelled), then closes after the
    /// publishes in flight are answered.
    ///
    /// - Throws: the ``RedisError`` that closed the connection for good, if that happens first.
    public func run() async throws(RedisError) {
        try await runUntilShutdown(events: events()) { await self.close() }
    }
}

extension StreamConsumer: Service {
    /// Runs until the service group shuts down gracefully (or this task is cancelled), then closes gracefully: stops
    /// reading, sends the acknowledgements made, releases what is held, and ends the loop normally.
    ///
    /// - Throws: the ``RedisError`` that closed the connection for good (a changed password, say), if that happens
    ///   first, so the service group learns of it.
    public func run() async throws(RedisError) {
        try await runUntilShutdown(events: core.connection.events()) { await self.close() }
    }
}

extension StreamReader: Service {
    /// Runs until the service group shuts down gracefully (or this task is cancelled), then closes: stops reading
    /// and ends the loop normally once it took what was already read.
    ///
    /// - Throws: the ``RedisError`` that closed the connection for good, if that happens first.
    public func run() async throws(RedisError) {
        try await runUntilShutdown(events: core.connection.events()) { await self.close() }
    }
}

extension ClusterSubscriber: Service {
    /// Runs until the service group shuts down gracefully (or this task is cancelled), then closes gracefully:
    /// unsubscribes on every node, delivers what already arrived, and ends every subscription's loop normally.
    public func run() async {
        try? await gracefulShutdown()
        await close()
    }
}

extension ClusterPublisher: Service {
    /// Runs until the service group shuts down gracefully (or this task is cancelled), then closes after the
    /// publishes in flight are answered.
    public func run() async {
        try? await gracefulShutdown()
        await close()
    }
}

/// Waits for graceful shutdown, cancellation, or the connection's end, whichever comes first; then `close`.
private func runUntilShutdown(events: AsyncStream<ConnectionEvent>, close: @escaping @Sendable () async -> Void) async throws(RedisError) {
    let ended: RedisError? = await withTaskGroup(of: RedisError?.self) { group in
        group.addTask {
            try? await gracefulShutdown()
            return nil
        }
        group.addTask {
            for await event in events {
                if case .closed(let error) = event { return error }
            }
            return nil
        }
        let first = await group.next() ?? nil
        group.cancelAll()
        return first
    }
    await close()
    if let ended { throw ended }
}
