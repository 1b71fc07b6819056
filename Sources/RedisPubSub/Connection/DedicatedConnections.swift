import Logging

/// Connections of their own for the blocking commands of one ``RedisConnection`` (``RedisConnection/sendBlocking(_:)``):
/// each call takes one (opening it if none is idle), so a BLPOP that waits a minute delays nobody else. A few idle
/// ones are kept for the next call; any call that ends abnormally (timeout, cancellation, lost connection) closes its
/// connection, which may still be blocked in the server. Closing the owner closes them all, busy ones included.
///
/// They never reconnect (a lost one fails its call and is dropped) and have no health check (a PING would wait behind
/// the blocking command); TCP keepalive notices a vanished server.
final class DedicatedConnections: Sendable {
    private struct State {
        var idle: [ConnectionCore] = []
        var busy: [ObjectIdentifier: ConnectionCore] = [:]
        var closed = false
    }

    /// How many idle connections are kept for later calls.
    static let maximumIdle = 4

    private let configuration: RedisConfiguration
    private let logger: Logger
    private let loop: EventLoop
    private let state = Locked(State())

    init(configuration: RedisConfiguration, logger: Logger, loop: EventLoop) {
        var dedicated = configuration
        dedicated.healthCheckInterval = nil
        dedicated.reconnect = .disabled
        self.configuration = dedicated
        self.logger = logger
        self.loop = loop
    }

    /// Runs `bytes` (one command) on a dedicated connection and waits up to `timeout` for its reply.
    func send(encoded bytes: [UInt8], timeout: Duration) async throws(RedisError) -> RedisValue {
        let core = try await take()
        let pending = Pending<RedisValue>()
        do {
            let reply = try await pending.wait {
                core.submit(Submission(bytes: bytes, request: .cancellable(pending), timeout: timeout))
            }
            giveBack(core)
            return reply
        } catch where error.code == .serverError || error.code == .permissionDenied {
            giveBack(core)  // an error reply leaves the connection as it was
            throw error
        } catch {
            drop(core)  // it may still be blocked in the server
            throw error
        }
    }

    private func take() async throws(RedisError) -> ConnectionCore {
        while true {
            let taken = try state.withLock { state throws(RedisError) -> ConnectionCore? in
                if state.closed { throw RedisError(.connectionClosed, "the connection was closed by close()") }
                guard let core = state.idle.popLast() else { return nil }
                state.busy[ObjectIdentifier(core)] = core
                return core
            }
            guard let core = taken else { break }
            if core.inbox.closedError == nil { return core }
            drop(core)  // it died while idle
        }
        let core = ConnectionCore(configuration: configuration, logger: logger, loop: loop)
        let registered = state.withLock { state -> Bool in
            guard !state.closed else { return false }
            state.busy[ObjectIdentifier(core)] = core
            return true
        }
        guard registered else { throw RedisError(.connectionClosed, "the connection was closed by close()") }
        let waiter = Pending<Void>()
        do {
            try await waiter.wait { core.loop.execute { core.connect(waiter) } }
        } catch {
            drop(core)
            throw error
        }
        return core
    }

    private func giveBack(_ core: ConnectionCore) {
        let kept = state.withLock { state -> Bool in
            state.busy[ObjectIdentifier(core)] = nil
            guard !state.closed, state.idle.count < Self.maximumIdle else { return false }
            state.idle.append(core)
            return true
        }
        if !kept { core.close() }
    }

    private func drop(_ core: ConnectionCore) {
        _ = state.withLock { $0.busy.removeValue(forKey: ObjectIdentifier(core)) }
        core.forceClose()
    }

    /// Closes every connection, idle or busy (a busy call fails with ``RedisError/Code/connectionClosed``); later
    /// calls fail at once.
    func closeAll() {
        let all = state.withLock { state -> [ConnectionCore] in
            state.closed = true
            defer {
                state.idle = []
                state.busy = [:]
            }
            return state.idle + Array(state.busy.values)
        }
        for core in all { core.forceClose() }
    }

    /// Connections open right now, idle and busy (for tests).
    var count: (idle: Int, busy: Int) {
        state.withLock { ($0.idle.count, $0.busy.count) }
    }
}
