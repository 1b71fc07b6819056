import Logging

/// Sends commands to the cluster node that serves them: a command connection per node (opened on first use), the
/// slot map (corrected by `-MOVED`, fetched again in the background after one, after a lost node, and
/// periodically), `-ASK` answered with `ASKING` and the command written together.
final class ClusterRouter: Sendable {
    let configuration: RedisClusterConfiguration
    let events = EventBroadcaster<ClusterEvent>()
    private let logger: Logger
    private let source: ClusterTopologySource
    private let state: Locked<State>
    /// Where each command's keys are (``ClusterCommandKeys``), by lowercased name (`xinfo|stream` for a subcommand),
    /// as the cluster's nodes said when first asked.
    private let commandKeys = Locked<[String: ClusterCommandKeys]>([:])
    /// The user may not read the command table (`COMMAND INFO` refused by an ACL).
    private let commandTableRefused = Locked(false)

    private struct State {
        var topology: ClusterTopology
        var connections: [ClusterNodeAddress: NodeConnection] = [:]
        var refresh: Task<Void, Never>?
        var periodic: Task<Void, Never>?
        var closed = false
    }

    private enum NodeConnection {
        case ready(RedisConnection)
        case opening(Task<Result<RedisConnection, RedisError>, Never>)
    }

    /// Redirections followed for one command before giving up (a map changing faster than it can be followed).
    static let redirectLimit = 5

    private init(configuration: RedisClusterConfiguration, topology: ClusterTopology, source: ClusterTopologySource, logger: Logger) {
        self.configuration = configuration
        self.source = source
        self.logger = logger
        self.state = Locked(State(topology: topology))
    }

    static func connect(to configuration: RedisClusterConfiguration, logger: Logger) async throws(RedisError) -> ClusterRouter {
        let (source, map) = try await ClusterTopologySource.start(configuration, logger: logger)
        let router = ClusterRouter(configuration: configuration, topology: map, source: source, logger: logger)
        let interval = configuration.topologyRefreshInterval
        let periodic = Task { [weak router] in
            while !Task.isCancelled {
                guard (try? await Task.sleep(for: interval)) != nil, let router else { return }
                await router.refresh()
            }
        }
        router.state.withLock { $0.periodic = periodic }
        return router
    }

    /// Sends `command` to the primary of `key`'s slot (any node when `key` is `nil`), following redirections; per
    /// `retry`, waits for a failover or a reconnect when the node is unreachable.
    func send(
        _ command: [RedisArgument], routedBy key: [UInt8]?, retry: PublishRetry
    ) async throws(RedisError) -> RedisValue {
        try await send(encoded: RESP.encode(command), slot: key.map { ClusterSlot.of($0) }, retry: retry)
    }

    /// `send(_:routedBy:retry:)` of a command already encoded, for `slot` (any node when `nil`). The common case, a
    /// connection to the slot's primary already open, takes one lock and no extra suspension.
    func send(encoded bytes: [UInt8], slot: Int?, retry: PublishRetry) async throws(RedisError) -> RedisValue {
        let deadline = Self.deadline(of: retry)
        var redirected: (node: ClusterNodeAddress, asking: Bool)?
        var redirects = 0
        while true {
            let (node, ready) = try await target(slot, redirected: redirected?.node, until: deadline)
            var used: RedisConnection?
            do throws(RedisError) {
                let connection: RedisConnection
                if let ready { connection = ready } else { connection = try await self.connection(to: node) }
                used = connection
                if redirected?.asking == true {
                    let replies = try await connection.sendBatch(
                        encoded: Self.asking + bytes, commands: 2, keepsErrorReplies: true)
                    if case .error(let message) = replies[1] { throw RedisError.server(message) }
                    return replies[1]
                }
                return try await connection.sendUninterruptible(encoded: bytes)
            } catch {
                if error.code == .serverError, let redirection = ClusterRedirection(error.message) {
                    redirected = try follow(redirection, redirects: &redirects, error.message)
                    continue
                }
                try await recover(from: error, at: node, used: used, until: deadline)
                redirected = nil
            }
        }
    }

    /// `verb channel message` for each of `messages`, to `slot`'s primary (any node when `nil`), written together and
    /// answered in order. Commands answered `-MOVED` or `-ASK` (the slot moved, or is moving, while they were on
    /// their way) are sent again, together, where the answer says; the others keep their counts.
    ///
    /// - Throws: the first error that neither a redirection nor ``PublishRetry`` resolves, once every command is
    ///   answered (some messages may have been delivered).
    func publish(
        _ verb: StaticString, _ channel: RedisArgument, contentsOf messages: [RedisArgument], slot: Int?, retry: PublishRetry
    ) async throws(RedisError) -> [Int] {
        let deadline = Self.deadline(of: retry)
        var counts = [Int](repeating: 0, count: messages.count)
        var pending = Array(messages.indices)
        var redirected: (node: ClusterNodeAddress, asking: Bool)?
        var redirects = 0
        while !pending.isEmpty {
            let (node, ready) = try await target(slot, redirected: redirected?.node, until: deadline)
            var used: RedisConnection?
            do throws(RedisError) {
                let connection: RedisConnection
                if let ready { connection = ready } else { connection = try await self.connection(to: node) }
                used = connection
                let asking = redirected?.asking == true
                var bytes: [UInt8] = []
                for index in pending {
                    if asking { bytes += Self.asking }
                    RESP.append(verb, channel, messages[index], to: &bytes)
                }
                let replies = try await connection.sendBatch(
                    encoded: bytes, commands: pending.count * (asking ? 2 : 1), keepsErrorReplies: true)
                var again: [Int] = []
                var redirection: ClusterRedirection?
                var failure: RedisError?
                for (position, index) in pending.enumerated() {
                    switch replies[asking ? position * 2 + 1 : position] {
                    case .integer(let count):
                        counts[index] = count
                    case .error(let message):
                        again.append(index)
                        if let moved = ClusterRedirection(message) {
                            redirection = redirection ?? moved
                        } else if failure == nil {
                            failure = RedisError.server(message)
                        }
                    case let reply:
                        throw RedisError(.protocolError, "unexpected reply to \(verb): \(reply.shape)")
                    }
                }
                pending = again  // only what failed is sent again
                if let failure { throw failure }
                if let redirection {
                    redirected = try follow(redirection, redirects: &redirects, "\(verb) to \(redirection.node)")
                }
            } catch {
                if error.code == .serverError, let redirection = ClusterRedirection(error.message) {
                    redirected = try follow(redirection, redirects: &redirects, error.message)
                    continue
                }
                try await recover(from: error, at: node, used: used, until: deadline)
                redirected = nil
            }
        }
        return counts
    }

    private static let asking = RESP.encode(["ASKING"])

    private static func deadline(of retry: PublishRetry) -> ContinuousClock.Instant? {
        if case .whileReconnecting(let limit) = retry.base { .now + limit } else { nil }
    }

    /// Where the next attempt goes: the node a redirection named, or `slot`'s primary (with its connection when one
    /// is open: one lock, no suspension).
    private func target(
        _ slot: Int?, redirected: ClusterNodeAddress?, until deadline: ContinuousClock.Instant?
    ) async throws(RedisError) -> (ClusterNodeAddress, RedisConnection?) {
        if let redirected { return (redirected, nil) }
        if let open = openConnection(forSlot: slot) { return open }
        return (try await route(slot, until: deadline), nil)
    }

    /// Follows a `-MOVED` (the map corrected at once, and fetched again in the background) or `-ASK`; throws past
    /// ``redirectLimit``.
    private func follow(
        _ redirection: ClusterRedirection, redirects: inout Int, _ message: String
    ) throws(RedisError) -> (node: ClusterNodeAddress, asking: Bool) {
        redirects += 1
        guard redirects <= Self.redirectLimit else {
            throw RedisError(.serverError, "still redirected after \(Self.redirectLimit) tries: \(message)")
        }
        if !redirection.ask {
            state.withLock { $0.topology.redirect(slot: redirection.slot, to: redirection.node) }
            refreshInBackground()
        }
        return (redirection.node, redirection.ask)
    }

    /// After `error` from `node`: returns when the command may be sent again (the node unreachable or the cluster
    /// changing, and ``PublishRetry`` allows waiting: the map was fetched again), throws `error` otherwise.
    private func recover(
        from error: RedisError, at node: ClusterNodeAddress, used: RedisConnection?, until deadline: ContinuousClock.Instant?
    ) async throws(RedisError) {
        if state.withLock({ $0.closed }) { throw error }
        let transient = error.code == .serverError && ClusterRedirection.isTransient(error.message)
        let unreachable: Set<RedisError.Code> = [.connectionClosed, .connectionRefused, .hostUnreachable, .nameResolutionFailed]
        guard transient || unreachable.contains(error.code) else { throw error }
        if error.code == .connectionClosed, let used { forget(used, at: node) }
        // The node is unreachable or the cluster is changing: ask for the map, and wait for it if allowed to.
        guard let deadline, ContinuousClock.now < deadline else {
            refreshInBackground()
            throw error
        }
        try? await Task.sleep(for: .milliseconds(50))
        await refresh()
    }

    /// The slot `command`'s keys are in, from the server's command table; nil for a command without keys.
    ///
    /// - Throws: ``RedisError/Code/invalidArgument`` when its keys are in different slots (nothing is sent: a cluster
    ///   runs a command on one node), or what asking the table threw.
    func slot(of command: [RedisArgument], retry: PublishRetry) async throws(RedisError) -> Int? {
        guard let first = command.first else { throw RedisError(.invalidArgument, "empty command") }
        var name = Self.lowercased(first)
        var keys = try await self.keys(ofCommand: name, retry: retry)
        if keys == .container {
            guard command.count > 1 else { return nil }
            name += "|" + Self.lowercased(command[1])
            keys = try await self.keys(ofCommand: name, retry: retry)
        }
        let found: [RedisArgument]
        if let listed = keys.keys(in: command) {
            found = listed
        } else if keys == .movable {
            do throws(RedisError) {
                found = (try await send(["COMMAND", "GETKEYS"] + command, routedBy: nil, retry: retry).array ?? [])
                    .compactMap { $0.bytes.map(RedisArgument.init) }
            } catch where error.code == .serverError || error.code == .permissionDenied {
                found = []  // no key in these arguments, arguments the command will refuse, or no right to ask
            }
        } else {
            return nil
        }
        var slot: Int?
        for key in found {
            let keySlot = ClusterSlot.of(key)
            if let slot, slot != keySlot {
                throw RedisError(
                    .invalidArgument,
                    "the keys of \(name.uppercased()) are in different hash slots (\(slot) and \(keySlot)), and a cluster "
                        + "runs a command on one node: give them a common {hash tag}")
            }
            slot = keySlot
        }
        return slot
    }

    private func keys(ofCommand name: String, retry: PublishRetry) async throws(RedisError) -> ClusterCommandKeys {
        if let known = ClusterCommandKeys.scripted[name] ?? commandKeys.withLock({ $0[name] }) { return known }
        if commandTableRefused.withLock({ $0 }) { return .none }
        let reply: RedisValue
        do throws(RedisError) {
            reply = try await send(["COMMAND", "INFO", RedisArgument(name)], routedBy: nil, retry: retry)
        } catch where error.code == .permissionDenied {
            // An ACL without +command: not asked again; commands go to any node, whose -MOVED is followed.
            commandTableRefused.withLock { $0 = true }
            return .none
        } catch where error.code == .serverError {
            return .none  // not remembered: a later call asks again
        }
        // A command the server does not know has no entry: any node answers it (with the error). Not remembered
        // either (a module may be loaded later); the table is bounded against callers inventing names.
        guard let keys = reply.array?.first.flatMap(ClusterCommandKeys.init(info:)) else { return .none }
        commandKeys.withLock { table in
            if table.count < Self.commandTableLimit { table[name] = keys }
        }
        return keys
    }

    /// Command names remembered at most: far more than Redis has, with its modules.
    private static let commandTableLimit = 4096

    private static func lowercased(_ argument: RedisArgument) -> String {
        String(decoding: argument.bytes, as: UTF8.self).lowercased()
    }

    /// The node for `slot` (`nil`: any node) and its connection, when the map names one and it is open.
    private func openConnection(forSlot slot: Int?) -> (ClusterNodeAddress, RedisConnection)? {
        state.withLock { state in
            let node: ClusterNodeAddress?
            if let slot {
                node = state.topology.primary(ofSlot: slot)
            } else {
                node = state.topology.primaries.first { if case .ready? = state.connections[$0] { true } else { false } }
            }
            guard let node, case .ready(let connection)? = state.connections[node] else { return nil }
            return (node, connection)
        }
    }

    /// The node for `slot` (`nil`: any node), fetching the map when it names none.
    private func route(_ slot: Int?, until deadline: ContinuousClock.Instant?) async throws(RedisError) -> ClusterNodeAddress {
        while true {
            let node = state.withLock { state -> ClusterNodeAddress? in
                if let slot { return state.topology.primary(ofSlot: slot) }
                let primaries = state.topology.primaries
                return primaries.first { if case .ready? = state.connections[$0] { true } else { false } } ?? primaries.first
            }
            if let node { return node }
            await refresh()
            guard let deadline, ContinuousClock.now < deadline else {
                throw RedisError(.connectionClosed, "no cluster node serves slot \(slot.map(String.init) ?? "any") right now")
            }
            try? await Task.sleep(for: .milliseconds(50))
        }
    }

    private func connection(to node: ClusterNodeAddress) async throws(RedisError) -> RedisConnection {
        let current = state.withLock { state -> Result<NodeConnection, RedisError> in
            if state.closed { return .failure(RedisError(.connectionClosed, "the cluster publisher was closed by close()")) }
            if let existing = state.connections[node] { return .success(existing) }
            let settings = configuration.configuration(for: node)
            let logger = self.logger
            let opening = Task { () -> Result<RedisConnection, RedisError> in
                do throws(RedisError) {
                    return .success(try await RedisConnection.connect(to: settings, logger: logger))
                } catch {
                    return .failure(error)
                }
            }
            state.connections[node] = .opening(opening)
            return .success(.opening(opening))
        }
        switch try current.get() {
        case .ready(let connection):
            return connection
        case .opening(let task):
            let result = await task.value
            let kept = state.withLock { state -> Bool in
                guard case .opening(let stored)? = state.connections[node], stored == task else {
                    return !state.closed
                }
                switch result {
                case .success(let connection) where !state.closed: state.connections[node] = .ready(connection)
                default: state.connections[node] = nil
                }
                return !state.closed
            }
            let connection = try result.get()
            if !kept {
                await connection.close()
                throw RedisError(.connectionClosed, "the cluster publisher was closed by close()")
            }
            return connection
        }
    }

    /// Drops the connection to `node` (lost, or closed for good): the next command there opens a new one, and the
    /// old one stops reconnecting.
    private func forget(_ connection: RedisConnection, at node: ClusterNodeAddress) {
        let dropped = state.withLock { state -> Bool in
            guard case .ready(let current)? = state.connections[node], current === connection else { return false }
            state.connections[node] = nil
            return true
        }
        if dropped { Task { await connection.close() } }
    }

    /// Fetches the map (joining a fetch under way) and gives up connections to nodes that serve no slot any more.
    func refresh() async {
        let task = state.withLock { state -> Task<Void, Never>? in
            if state.closed { return nil }
            if let running = state.refresh { return running }
            let task = Task { [self] in
                let fetched: Result<ClusterTopology, RedisError>
                do throws(RedisError) { fetched = .success(try await source.fetch()) } catch { fetched = .failure(error) }
                apply(fetched)
            }
            state.refresh = task
            return task
        }
        await task?.value
    }

    private func refreshInBackground() {
        Task { await refresh() }
    }

    private func apply(_ fetched: Result<ClusterTopology, RedisError>) {
        switch fetched {
        case .failure(let error):
            state.withLock { $0.refresh = nil }
            logger.warning("fetching the cluster map failed", metadata: ["error": "\(error)"])
            events.send(.topologyRefreshFailed(error))
        case .success(let map):
            let (changed, stale) = state.withLock { state -> (Bool, [RedisConnection]) in
                state.refresh = nil
                let changed = map.primaries != state.topology.primaries
                state.topology = map
                let serving = Set(map.primaries)
                var stale: [RedisConnection] = []
                for (node, connection) in state.connections where !serving.contains(node) {
                    if case .ready(let connection) = connection {
                        stale.append(connection)
                        state.connections[node] = nil
                    }
                }
                return (changed, stale)
            }
            for connection in stale { Task { await connection.close() } }
            if changed {
                let primaries = map.primaries.map(\.description)
                logger.info("cluster map changed", metadata: ["redis.primaries": "\(primaries.joined(separator: " "))"])
                events.send(.topologyChanged(primaries: primaries))
            }
        }
    }

    /// The nodes it holds a connection to (tests).
    var connectedNodes: [ClusterNodeAddress] {
        state.withLock { state in
            state.connections.compactMap { node, connection in
                if case .ready = connection { return node }
                return nil
            }.sorted()
        }
    }

    func close() async {
        let (connections, opening, tasks) = state.withLock { state in
            state.closed = true
            defer { state.connections = [:] }
            let ready = state.connections.values.compactMap { if case .ready(let c) = $0 { c } else { nil } }
            let opening = state.connections.values.compactMap { if case .opening(let t) = $0 { t } else { nil } }
            return (ready, opening, [state.refresh, state.periodic].compactMap { $0 })
        }
        for task in tasks { task.cancel() }
        for connection in connections { await connection.close() }
        for task in opening {
            if case .success(let connection) = await task.value { await connection.close() }
        }
        await source.close()
        events.finish()
    }
}
