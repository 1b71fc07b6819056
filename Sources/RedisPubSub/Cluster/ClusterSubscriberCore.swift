#if canImport(FoundationEssentials)
import FoundationEssentials
#else
import Foundation
#endif
import Logging
import Synchronization

/// The event-loop side of a ``ClusterSubscriber``: carries out what the ``ClusterSubscriptionStateMachine`` decides
/// (connections per node, SUBSCRIBE commands, map refreshes, subscriptions' news), routes each node's pushes, and
/// reports the outcomes back to the machine. Loop-confined.
final class ClusterSubscriberCore: @unchecked Sendable {
    // @unchecked Sendable because: every mutable property is touched only on `loop` (asserted); other threads only
    // call `execute`, which hops there, and read the Sendable `events`, `source` and `discardedPushes`.

    typealias Machine = ClusterSubscriptionStateMachine<SubscriptionSink>

    let loop: EventLoop
    let configuration: RedisClusterConfiguration
    let logger: Logger
    let events = EventBroadcaster<ClusterEvent>()
    let source: ClusterTopologySource
    /// Message-shaped pushes too malformed to route, from any node.
    let discardedPushes = Atomic(0)

    private var machine: Machine
    private var links: [ClusterNodeAddress: ClusterNodeLink] = [:]
    /// The handovers' connections, by handover number.
    private var handoverLinks: [UInt64: ClusterNodeLink] = [:]
    /// Command connections that ask primaries for their migrations (``RedisClusterConfiguration/migrationWatchInterval``).
    private var watchConnections: [ClusterNodeAddress: ConnectionCore] = [:]
    private var watchTimer: LoopTimer?
    /// Bumped by every change of the machine: the links' route caches are valid for one generation.
    private(set) var generation: UInt64 = 0
    private var toWake: [SubscriptionSink] = []
    /// New subscriptions not yet confirmed, each with the timer that gives up on it.
    private var waiting: [ObjectIdentifier: (sink: SubscriptionSink, timer: LoopTimer)] = [:]
    private var additions: [UInt64: Addition] = [:]
    private var nextAddition: UInt64 = 0
    private struct Addition {
        let sink: SubscriptionSink
        /// Every key the caller asked for.
        let keys: [ChannelKey]
        /// The keys it put on the subscription: taken out again if it fails or its caller left.
        var introduced: [ChannelKey]
        let pending: Pending<Void>
        let timer: LoopTimer
    }
    private var refreshing = false
    private var refreshAgain = false
    private var refreshTimer: LoopTimer?
    private var refreshFailures = 0
    /// Maps fetched in a row that still left channels waiting.
    private var settlingRefreshes = 0
    private var lastRefreshEnded: ContinuousClock.Instant?
    private var periodicTimer: LoopTimer?
    private var closing = false
    private var closed = false

    init(configuration: RedisClusterConfiguration, topology: ClusterTopology, source: ClusterTopologySource, logger: Logger, loop: EventLoop) {
        self.configuration = configuration
        self.source = source
        self.logger = logger
        self.loop = loop
        self.machine = Machine(topology: topology)
    }

    /// Runs `body` on the loop with this core.
    func execute(_ body: @escaping @Sendable (ClusterSubscriberCore) -> Void) {
        loop.execute { body(self) }
    }

    /// Starts the periodic map refresh (loop).
    func start() {
        loop.assertInLoop()
        schedulePeriodicRefresh()
        scheduleMigrationWatch()
    }

    static let closingError = RedisError(.connectionClosed, "the cluster subscriber is closing: close() was called")
    static let closedError = RedisError(.connectionClosed, "the cluster subscriber was closed by close()")

    // MARK: Subscriptions (loop)

    func add(_ sink: SubscriptionSink) {
        loop.assertInLoop()
        guard !closing else {
            let error = closed ? Self.closedError : Self.closingError
            sink.ready.fail(error)
            return sink.finish(.failed(error))
        }
        let limit = configuration.seeds[0].connectTimeout
        let timer = loop.scheduleTimer(at: .now + limit) { [self] in
            guard waiting.removeValue(forKey: ObjectIdentifier(sink)) != nil else { return }
            let error = RedisError(.connectionClosed, "not subscribed within \(limit): \(whyUnconfirmed())")
            run(machine.remove(sink.keys, from: sink, ends: true, now: .now))
            sink.ready.fail(error)
            sink.finish(.failed(error))
        }
        waiting[ObjectIdentifier(sink)] = (sink, timer)
        run(machine.subscribe(sink, to: sink.keys, now: .now))
    }

    func remove(_ sink: SubscriptionSink, completion: (@Sendable () -> Void)? = nil) {
        loop.assertInLoop()
        if let entry = waiting.removeValue(forKey: ObjectIdentifier(sink)) {
            entry.timer.cancel()
            sink.ready.fail(.cancelled)
        }
        for (request, addition) in additions where addition.sink === sink {
            additions[request] = nil
            addition.timer.cancel()
            addition.pending.fail(.cancelled)
        }
        guard !closing else {
            completion?()
            return
        }
        run(machine.remove(sink.keys, from: sink, ends: true, now: .now), completion: completion)
    }

    func addKeys(_ keys: [ChannelKey], to sink: SubscriptionSink, _ pending: Pending<Void>) {
        loop.assertInLoop()
        if closing { return pending.fail(closed ? Self.closedError : Self.closingError) }
        guard !sink.hasEnded else {
            return pending.fail(RedisError(.invalidArgument, "the subscription has ended: subscribe again"))
        }
        var unique = Set<ChannelKey>()
        let keys = keys.filter { unique.insert($0).inserted }
        let introduced = sink.insertKeys(keys)
        nextAddition += 1
        let request = nextAddition
        let limit = configuration.seeds[0].connectTimeout
        let timer = loop.scheduleTimer(at: .now + limit) { [self] in
            finishAddition(request, .failure(RedisError(.connectionClosed, "not subscribed within \(limit): \(whyUnconfirmed())")))
        }
        additions[request] = Addition(sink: sink, keys: keys, introduced: introduced, pending: pending, timer: timer)
        sink.setSubscribed(false)
        run(machine.add(keys, to: sink, request: request, now: .now))
    }

    func removeKeys(_ keys: [ChannelKey], from sink: SubscriptionSink, completion: @escaping @Sendable () -> Void) {
        loop.assertInLoop()
        let held = sink.removeKeys(keys)
        guard !held.isEmpty, !closing else { return completion() }
        run(machine.remove(held, from: sink, now: .now), completion: completion)
    }

    /// Subscriptions registered now, and nodes with a connection (tests, introspection).
    var subscriptionCount: Int { machine.subscriptionCount }
    var connectedNodes: [ClusterNodeAddress] { links.keys.sorted() }
    /// Handovers with a connection open (tests).
    var handoverCount: Int { handoverLinks.count }
    /// Whether a handover holds `key` confirmed on the node importing its slot, before the flip (tests).
    func handoverConfirmed(_ key: ChannelKey) -> Bool { machine.handoverConfirmed(key) }
    func node(of key: ChannelKey) -> ClusterNodeAddress? { machine.node(of: key) }

    private func finishAddition(_ request: UInt64, _ outcome: Result<Void, RedisError>) {
        guard let addition = additions.removeValue(forKey: request) else { return }
        addition.timer.cancel()
        let sink = addition.sink
        if case .success = outcome {
            updateSubscribed(sink)  // first: the caller may look at `isSubscribed` as soon as it resumes
            if addition.pending.succeed(()) { return }
        }
        // Failed, or its caller left: what it put on the subscription is taken out again, except names another
        // addition of the same subscription still asks for (they become that addition's to undo).
        let failure: RedisError
        if case .failure(let error) = outcome { failure = error } else { failure = .cancelled }
        var introduced = addition.introduced
        for key in addition.introduced {
            guard let other = additions.filter({ $0.value.sink === sink && $0.value.keys.contains(key) }).keys.min()
            else { continue }
            additions[other]?.introduced.append(key)
            introduced.removeAll { $0 == key }
        }
        let held = sink.removeKeys(introduced)
        if !held.isEmpty && !closing { run(machine.remove(held, from: sink, now: .now)) }
        updateSubscribed(sink)
        addition.pending.fail(failure)
    }

    /// A subscription is subscribed when it is not deaf and no addition of it waits.
    private func updateSubscribed(_ sink: SubscriptionSink) {
        guard !sink.hasEnded else { return }
        sink.setSubscribed(!machine.isDeaf(sink) && !additions.values.contains { $0.sink === sink })
    }

    private func whyUnconfirmed() -> String {
        let down = machine.connections.filter { $0.value == .lost }.keys.sorted().map(\.description)
        if !down.isEmpty { return "node \(down.joined(separator: ", ")) is down and no other node took its slots over" }
        return "the cluster did not confirm the subscription (see the cluster events)"
    }

    // MARK: Carrying out the machine's actions (loop)

    private func run(_ actions: [Machine.Action], completion: (@Sendable () -> Void)? = nil) {
        generation &+= 1
        // `completion` runs once every UNSUBSCRIBE below is answered: one count for each, and one for this loop
        // (so an answer that comes at once, inside the loop, cannot run it early or twice).
        let outstanding = Counter(1)
        let finishUnsubscribe: (() -> Void)? = completion.map { completion in
            {
                outstanding.value -= 1
                if outstanding.value == 0 { completion() }
            }
        }
        var moves: [[String]: [RedisName]] = [:]
        for action in actions {
            switch action {
            case .connect(let node): connect(node)
            case .disconnect(let node): disconnect(node)
            case .send(let command):
                if completion != nil && !command.subscribe {
                    outstanding.value += 1
                    send(command, then: finishUnsubscribe)
                } else {
                    send(command, then: nil)
                }
            case .refreshTopology: requestRefresh()
            case .ready(let sink):
                waiting.removeValue(forKey: ObjectIdentifier(sink))?.timer.cancel()
                sink.setSubscribed(true)
                sink.events.send(.subscribed(at: Date()))
                sink.ready.succeed(())
            case .lost(let sink, let cause):
                sink.setSubscribed(false)
                sink.events.send(.disconnected(at: Date(), cause: cause))
            case .restored(let sink, let gap):
                updateSubscribed(sink)
                sink.events.send(.resubscribed(at: Date(), gap: gap))
            case .fail(let sink, let error):
                waiting.removeValue(forKey: ObjectIdentifier(sink))?.timer.cancel()
                for (request, addition) in additions where addition.sink === sink {
                    additions[request] = nil
                    addition.timer.cancel()
                    addition.pending.fail(error)
                }
                sink.ready.fail(error)
                sink.finish(.failed(error))
            case .additionFinished(let request, let outcome):
                finishAddition(request, outcome)
            case .moved(let key, let from, let to):
                moves[[from.description, to.description], default: []].append(RedisName(bytes: key.name))
            case .openHandover(let id, let target): openHandover(id, to: target)
            case .sendHandover(let id, let keys, let sequence): sendHandover(id, keys, sequence)
            case .closeHandover(let id): handoverLinks.removeValue(forKey: id)?.detach()
            }
        }
        for (pair, channels) in moves.sorted(by: { $0.key.lexicographicallyPrecedes($1.key) }) {
            logger.info(
                "channels moved to another node",
                metadata: ["redis.from": "\(pair[0])", "redis.to": "\(pair[1])", "redis.channels": "\(channels.count)"])
            events.send(.channelsMoved(from: pair[0], to: pair[1], channels: channels))
        }
        finishUnsubscribe?()
    }

    /// A count shared by the completions of one `run` (loop-confined).
    private final class Counter {
        var value: Int
        init(_ value: Int) { self.value = value }
    }

    private func connect(_ node: ClusterNodeAddress) {
        guard !closing else { return }
        let connection = ConnectionCore(configuration: configuration.configuration(for: node), logger: logger, loop: loop)
        let link = ClusterNodeLink(node: node, core: self, connection: connection)
        links[node]?.detach()
        links[node] = link
        connection.pushHandler = link
        connection.connect { [self] in linkReady(link) }
    }

    private func disconnect(_ node: ClusterNodeAddress) {
        links.removeValue(forKey: node)?.detach()
    }

    private func send(_ command: Machine.Command, then done: (() -> Void)?) {
        guard let link = command.handover.map({ handoverLinks[$0] }) ?? links[command.node], !link.isDetached else {
            done?()
            return
        }
        let kind = command.key.kind
        let verb = command.subscribe ? kind.subscribeCommand : kind.unsubscribeCommand
        let expects = command.subscribe
            ? nil : Acknowledgement(type: kind.acknowledgement(subscribe: false), name: command.key.name)
        link.connection.sendInternal([verb, RedisArgument(command.key.name)], expects: expects) { [self] result in
            defer { done?() }
            guard !closed, current(link) else { return }
            switch result {
            case .success(let reply):
                guard case .array(let elements) = reply, elements.count == 3,
                      elements[0].bytes == kind.acknowledgement(subscribe: command.subscribe),
                      elements[1].bytes == command.key.name
                else {
                    link.connection.closeNow(RedisError(.protocolError, "unexpected acknowledgement: \(reply.shape)"))
                    return
                }
                if command.subscribe { run(machine.acknowledged(command, now: .now)) }
            case .failure(let error) where error.code == .timeout:
                // The server may still act on it later: only a new connection is certain of its state.
                link.connection.closeNow(error)
            case .failure(let error) where error.code == .connectionClosed:
                break  // the connection is gone: its loss is reported on its own
            case .failure(let error):
                run(machine.refused(command, error, now: .now))
            }
        }
    }

    // MARK: The map (loop)

    /// Fetches the map now, or as soon as the backoff allows: right after a map that left channels waiting (a
    /// failover under way: 25 ms, doubling to 200 ms, after some seconds 1 s) or after failed fetches (100 ms,
    /// doubling to 5 s), requests wait,
    /// so a cluster that stays down costs a few fetches a second, not one per round trip.
    private func requestRefresh() {
        guard !closing else { return }
        if refreshing {
            refreshAgain = true
            return
        }
        if let last = lastRefreshEnded, ContinuousClock.now < last + refreshBackoff {
            return scheduleRefresh(at: last + refreshBackoff)
        }
        refreshTimer?.cancel()
        refreshTimer = nil
        refreshing = true
        let down = Set(machine.connections.filter { $0.value == .lost }.keys)
        let source = self.source
        Task {
            let result: Result<ClusterTopology, RedisError>
            do throws(RedisError) { result = .success(try await source.fetch(avoiding: down)) } catch { result = .failure(error) }
            self.execute { $0.refreshed(result) }
        }
    }

    private var refreshBackoff: Duration {
        // 25 ms doubling to 200 ms for about four seconds (a failover's usual length), then once a second.
        let settling: Duration =
            settlingRefreshes == 0 ? .zero
            : settlingRefreshes < 24 ? .milliseconds(min(200, 25 << min(settlingRefreshes - 1, 3))) : .seconds(1)
        let failing: Duration = refreshFailures == 0 ? .zero : .milliseconds(min(5_000, 100 << min(refreshFailures, 6)))
        return max(settling, failing)
    }

    private func refreshed(_ result: Result<ClusterTopology, RedisError>) {
        guard !closing else {
            refreshing = false
            return
        }
        switch result {
        case .success(let map):
            refreshFailures = 0
            let before = machine.topology.primaries
            run(machine.topologyUpdated(map, now: .now))  // still `refreshing`: what this asks for is one more fetch, later
            if map.primaries != before {
                let primaries = map.primaries.map(\.description)
                logger.info("cluster map changed", metadata: ["redis.primaries": "\(primaries.joined(separator: " "))"])
                events.send(.topologyChanged(primaries: primaries))
            }
            settlingRefreshes = machine.needsTopology ? settlingRefreshes + 1 : 0
        case .failure(let error):
            refreshFailures += 1
            logger.warning("fetching the cluster map failed", metadata: ["error": "\(error)"])
            events.send(.topologyRefreshFailed(error))
        }
        refreshing = false
        lastRefreshEnded = .now
        if refreshAgain || machine.needsTopology {
            refreshAgain = false
            requestRefresh()
        }
    }

    private func scheduleRefresh(at deadline: ContinuousClock.Instant) {
        guard refreshTimer == nil else { return }
        refreshTimer = loop.scheduleTimer(at: deadline) { [self] in
            refreshTimer = nil
            requestRefresh()
        }
    }

    private func schedulePeriodicRefresh() {
        periodicTimer = loop.scheduleTimer(at: .now + configuration.topologyRefreshInterval) { [self] in
            guard !closing else { return }
            requestRefresh()
            schedulePeriodicRefresh()
        }
    }

    // MARK: Handovers: lossless slot migrations (loop)

    private func openHandover(_ id: UInt64, to target: ClusterNodeAddress) {
        guard !closing else { return }
        var settings = configuration.configuration(for: target)
        settings.reconnect = .disabled  // a new connection could not take the channels back without a gap
        let connection = ConnectionCore(configuration: settings, logger: logger, loop: loop)
        let link = ClusterNodeLink(node: target, handover: id, core: self, connection: connection)
        handoverLinks[id]?.detach()
        handoverLinks[id] = link
        connection.pushHandler = link
        connection.connect { [self] in linkReady(link) }
    }

    /// `ASKING` and one `SSUBSCRIBE` of every key, written together: the first command on the connection, before it
    /// is in subscribed mode (which takes no `ASKING`).
    private func sendHandover(_ id: UInt64, _ keys: [ChannelKey], _ sequence: UInt64) {
        guard let link = handoverLinks[id], !link.isDetached else { return }
        let bytes = RESP.encode(["ASKING"]) + RESP.encode(["SSUBSCRIBE"] + keys.map { RedisArgument($0.name) })
        link.connection.sendInternal(encoded: bytes, replies: keys.count + 1) { [self] index, result in
            guard !closed, current(link) else { return }
            switch result {
            case .success(let reply) where index == 0:
                _ = reply  // ASKING's OK
            case .success(let reply):
                let key = keys[index - 1]
                guard case .array(let elements) = reply, elements.count == 3,
                      elements[0].bytes == SubscriptionKind.shardChannel.acknowledgement(subscribe: true),
                      elements[1].bytes == key.name
                else {
                    return link.connection.closeNow(RedisError(.protocolError, "unexpected acknowledgement: \(reply.shape)"))
                }
                run(machine.handoverAcknowledged(id, key: key, sequence: sequence, now: .now))
            case .failure(let error) where error.code == .timeout:
                link.connection.closeNow(error)
            case .failure(let error) where error.code == .connectionClosed:
                break  // reported by the link
            case .failure(let error):
                logger.debug("a handover was refused", metadata: ["redis.node": "\(link.node)", "error": "\(error)"])
                run(machine.handoverFailed(id, error, refused: true, now: .now))
                // A refused SSUBSCRIBE of several channels gets one error, not one per channel: the other answers
                // never come, and a graceful close would wait for them.
                link.connection.forceClose()
            }
        }
    }

    private func handoverEnded(_ id: UInt64, _ link: ClusterNodeLink, _ error: RedisError) {
        handoverLinks[id] = nil
        link.detach()
        run(machine.handoverFailed(id, error, now: .now))
    }

    private func scheduleMigrationWatch() {
        guard let interval = configuration.migrationWatchInterval else { return }
        watchTimer = loop.scheduleTimer(at: .now + interval) { [self] in
            guard !closing else { return }
            watchMigrations()
            scheduleMigrationWatch()
        }
    }

    /// Asks each primary holding sharded channels which slots it is migrating; opens a command connection to each
    /// one first, and gives up those no longer needed.
    private func watchMigrations() {
        let nodes = machine.nodesToWatch
        for (node, connection) in watchConnections where !nodes.contains(node) {
            connection.close()
            watchConnections[node] = nil
        }
        for node in nodes {
            guard let connection = watchConnections[node] else {
                let connection = ConnectionCore(configuration: configuration.configuration(for: node), logger: logger, loop: loop)
                watchConnections[node] = connection
                connection.connect {}
                continue  // asked at the next tick, once connected
            }
            connection.sendInternal(["CLUSTER", "NODES"]) { [self] result in
                guard !closing, watchConnections[node] === connection else { return }
                if case .failure = result {
                    // Closed for good (its reconnect policy gave up, whatever the error) or not connected yet:
                    // replaced at the next tick if closed, so that the node is not left unwatched.
                    if connection.isClosed { watchConnections[node] = nil }
                    return
                }
                guard case .success(let reply) = result, let text = reply.string else { return }
                let migrating = ClusterMigrations.parse(clusterNodes: text, known: machine.topology.nodes)
                run(machine.migrationsObserved(migrating, on: node))
            }
        }
    }

    // MARK: What the node connections report (loop)

    /// Whether `link` is still the connection the core uses for its node or handover.
    private func current(_ link: ClusterNodeLink) -> Bool {
        if let id = link.handover { return handoverLinks[id] === link }
        return links[link.node] === link
    }

    private func linkReady(_ link: ClusterNodeLink) {
        guard current(link), !closing else { return }
        if let id = link.handover { return run(machine.handoverReady(id)) }
        logger.debug("connected to a cluster node", metadata: ["redis.node": "\(link.node)"])
        events.send(.nodeConnected(node: link.node.description))
        run(machine.connectionReady(link.node))
    }

    func linkRestored(_ link: ClusterNodeLink) {
        linkReady(link)
    }

    func linkLost(_ link: ClusterNodeLink, _ error: RedisError) {
        guard current(link), !closing else { return }
        flush()
        if let id = link.handover { return handoverEnded(id, link, error) }
        events.send(.nodeDisconnected(node: link.node.description, cause: error))
        run(machine.connectionLost(link.node, error, now: .now))
    }

    func linkClosed(_ link: ClusterNodeLink, _ error: RedisError?) {
        guard current(link), !closing else { return }
        flush()
        let cause = error ?? RedisError(.connectionClosed, "the connection to \(link.node) was closed")
        if let id = link.handover { return handoverEnded(id, link, cause) }
        links[link.node] = nil
        events.send(.nodeDisconnected(node: link.node.description, cause: cause))
        // Every node has the same settings: what one refuses for good (a password, a certificate), all would.
        let permanent: Set<RedisError.Code> = [.authenticationFailed, .invalidConfiguration, .permissionDenied]
        run(machine.connectionClosed(link.node, cause, permanent: permanent.contains(cause.code), now: .now))
    }

    /// A message from `link`'s node, recognised in the raw reply.
    func route(_ push: RawPush, from link: ClusterNodeLink) {
        let routeName = push.pattern ?? push.channel
        let name: [UInt8]
        let sinks: [SubscriptionSink]
        if let cache = link.routeCache, cache.generation == generation, cache.kind == push.kind,
           cache.name.sameBytes(as: routeName)
        {
            name = cache.name
            sinks = cache.sinks
        } else {
            name = Array(routeName)
            let key = ChannelKey(kind: push.kind, name: name)
            sinks = link.handover.map { machine.recipients(key, fromHandover: $0) } ?? machine.recipients(key, from: link.node)
            link.routeCache = (generation, push.kind, name, sinks)
        }
        guard !sinks.isEmpty else { return }
        let message = Message(push, route: name)
        for sink in sinks where sink.append(message) {
            toWake.append(sink)
        }
    }

    /// A push from `link`'s node that is not a plain message; `false` for a reply to a command.
    func handlePush(_ reply: RedisValue, awaited: Acknowledgement?, from link: ClusterNodeLink) -> Bool {
        switch PubSubPush(reply, awaited: awaited) {
        case nil:
            return false
        case .malformed:
            let count = discardedPushes.add(1, ordering: .relaxed).newValue
            logger.debug("dropped a malformed message push", metadata: ["redis.push": "\(reply.shape)", "redis.dropped": "\(count)"])
            return true
        case .message(let route, let message):
            let sinks = link.handover.map { machine.recipients(route, fromHandover: $0) } ?? machine.recipients(route, from: link.node)
            for sink in sinks where sink.append(message) {
                toWake.append(sink)
            }
            return true
        case .unsubscribed(let key):
            // Not the reply the oldest command waits for, so no command's reply at all: the server's own decision,
            // or a late second answer when its sunsubscribe crossed ours. Acted on only for a channel held there.
            guard current(link), !closing else { return true }
            if let id = link.handover, machine.handover(of: key) != id {
                run(machine.handoverUnsubscribed(id, key: key))  // dropped before the channel moved there
                return true
            }
            guard machine.node(of: key) == link.node, machine.handover(of: key) == link.handover else { return true }
            logger.debug("the server ended a subscription", metadata: ["redis.node": "\(link.node)"])
            run(machine.serverUnsubscribed(key, on: link.node, handover: link.handover, now: .now))
            return true
        }
    }

    func flush() {
        for sink in toWake { sink.wake() }
        toWake.removeAll(keepingCapacity: true)
    }

    // MARK: Closing (loop)

    /// Unsubscribes everything, lets the acknowledgements (and the messages before them) arrive, closes every
    /// connection, then ends every subscription normally.
    func close(_ completion: @escaping @Sendable () -> Void) {
        loop.assertInLoop()
        guard !closing else {
            closeWaiters.append(completion)
            if closed { runCloseWaiters() }
            return
        }
        closeWaiters.append(completion)
        run(machine.unsubscribeAll())
        closing = true
        refreshTimer?.cancel()
        periodicTimer?.cancel()
        watchTimer?.cancel()
        for connection in watchConnections.values { connection.forceClose() }
        watchConnections = [:]
        for (_, entry) in waiting {
            entry.timer.cancel()
            entry.sink.ready.fail(Self.closingError)
        }
        waiting = [:]
        for (_, addition) in additions {
            addition.timer.cancel()
            addition.pending.fail(Self.closingError)
        }
        additions = [:]
        let closing = Array(links.values) + Array(handoverLinks.values)
        links = [:]
        handoverLinks = [:]
        closingLinks = closing  // still delivering what arrives before the acknowledgements
        closesOutstanding = closing.count + 1
        let done: @Sendable () -> Void = { [self] in
            execute { core in
                core.closesOutstanding -= 1
                if core.closesOutstanding == 0 { core.finishClose() }
            }
        }
        for link in closing { link.close(done) }
        Task { [source] in
            await source.close()
            done()
        }
    }

    /// Forced: closes every connection at once (also those a graceful close is waiting for).
    func forceClose() {
        for link in links.values { link.connection.forceClose() }
        for link in handoverLinks.values { link.connection.forceClose() }
        for link in closingLinks { link.connection.forceClose() }
    }

    /// The links a graceful close waits for.
    private var closingLinks: [ClusterNodeLink] = []

    private var closeWaiters: [@Sendable () -> Void] = []
    /// Connections (and the map's source) still closing.
    private var closesOutstanding = 0

    private func finishClose() {
        flush()
        closed = true
        closingLinks = []
        for sink in machine.removeAll() { sink.finish(.finished) }
        events.finish()
        runCloseWaiters()
    }

    private func runCloseWaiters() {
        let waiters = closeWaiters
        closeWaiters = []
        for waiter in waiters { waiter() }
    }
}
