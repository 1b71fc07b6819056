/// Where every channel of a cluster subscriber is subscribed, and what to do as the cluster changes.
///
/// Each sharded channel is subscribed on the primary that serves its slot, with one `SSUBSCRIBE` per channel (so no
/// command can span two slots: `CROSSSLOT` cannot happen); classic channels and patterns, which the cluster broadcasts
/// to every node, on one node of its choosing. Connections are asked for when a node gets its first channel and
/// given up when it has none left. When a channel goes deaf (its node's connection was lost, the server dropped it
/// with a `sunsubscribe` push after a slot migration or failover, or `-MOVED` answered its `SSUBSCRIBE`), every
/// subscription holding it is told so once, the channel is subscribed again where the map (or the redirection)
/// says, and a subscription is told it is back once every channel it holds is confirmed again.
///
/// A planned migration can cost nothing: told that a slot is migrating (by the driver's watch of its node's `CLUSTER
/// NODES`), the machine opens a *handover* connection to the importing node and subscribes the slot's channels
/// there with `ASKING` before the slot flips (a connection in subscribed mode takes no `ASKING`, hence a connection
/// of its own, and one `SSUBSCRIBE` for all of them). When the old owner then drops them, they already receive on
/// the new one: no gap. They stay on that connection until they next move or end.
///
/// A pure value: no clock (times come in with the events), no I/O. Events in, actions out; the driver
/// (``ClusterSubscriberCore``) carries the actions out and reports the outcomes.
struct ClusterSubscriptionStateMachine<Sink: AnyObject> {
    typealias Node = ClusterNodeAddress
    typealias Instant = ContinuousClock.Instant

    /// A (P|S)(UN)SUBSCRIBE of one name on one node. `sequence` tells a current acknowledgement from a stale one.
    struct Command: Hashable, Sendable {
        let node: Node
        let key: ChannelKey
        let subscribe: Bool
        let sequence: UInt64
        /// On the connection of this handover, not on the node's own.
        var handover: UInt64? = nil
    }

    enum Action {
        /// Open a subscriber connection to `node` (it reconnects by itself once open).
        case connect(Node)
        /// Close the connection to `node`: no channel lives there any more.
        case disconnect(Node)
        case send(Command)
        /// Fetch the cluster's map again (the driver coalesces repeated requests).
        case refreshTopology
        /// Every channel of a new subscription is confirmed: its `subscribe` call returns.
        case ready(Sink)
        /// A confirmed subscription lost at least one channel: from now on it misses messages.
        case lost(Sink, cause: RedisError)
        /// Every channel of a subscription that had lost some is confirmed again, after `gap`.
        case restored(Sink, gap: Duration)
        /// The server refused a channel the subscription holds (an ACL, say): it ends with `error`.
        case fail(Sink, RedisError)
        /// A live subscription's addition is settled.
        case additionFinished(request: UInt64, Result<Void, RedisError>)
        /// A channel is subscribed again on another node than before (for the log and ``ClusterEvent``).
        case moved(ChannelKey, from: Node, to: Node)
        /// Open a connection to `target` for handover `id`. It does not reconnect: a new connection could not take
        /// the channels back without a gap anyway.
        case openHandover(id: UInt64, target: Node)
        /// On the handover's connection: `ASKING`, then one `SSUBSCRIBE` of `keys`; each key's answer goes to
        /// ``handoverAcknowledged(_:key:sequence:now:)`` or ``handoverFailed(_:_:now:)``.
        case sendHandover(id: UInt64, keys: [ChannelKey], sequence: UInt64)
        /// Close the handover's connection: no channel lives on it, or the migration was given up.
        case closeHandover(id: UInt64)
    }

    private enum Phase: Equatable {
        /// No node known for it yet: waits for a map that has one.
        case unplaced
        /// Its node is chosen but that node's connection is not ready.
        case waitingForNode
        case subscribing(UInt64)
        case subscribed(UInt64)
    }

    private struct Entry {
        /// Subscriptions the channel's messages go to.
        var sinks: [Sink] = []
        /// Subscriptions waiting for the channel's confirmation on its current node: they get no messages until then,
        /// because what arrives before it was published before the server saw the SUBSCRIBE.
        var joining: [Sink] = []
        var node: Node?
        var phase = Phase.unplaced
        /// `-MOVED` answers since the channel was last confirmed or the map was last fetched.
        var redirects = 0
        /// The node that dropped the channel by itself, and how many maps since still named it: a node that gave a
        /// channel up does not own its slot any more, even if a stale map says so (after a failover it is a replica,
        /// and a replica would take the SSUBSCRIBE).
        var droppedBy: (node: Node, maps: Int)?
        /// The handover whose connection the channel lives on since its slot flipped (`node` is then the node that
        /// imported it); `nil`: the node's own connection.
        var handover: UInt64?
        /// Fresh maps in a row that name another primary than the node a handover moved the channel to, and when the
        /// first of them came.
        var offMap = 0
        var offMapSince: Instant?
    }

    /// A slot's channels subscribed ahead on the node importing it.
    struct Handover: Equatable {
        let slot: Int
        let source: Node
        let target: Node
        /// The channels asked for, all in one `SSUBSCRIBE` (after it, the connection takes no `ASKING`: a channel
        /// subscribed later takes the ordinary path).
        var keys: [ChannelKey]
        /// The `SSUBSCRIBE`'s number, once sent.
        var sequence: UInt64?
        var confirmed: Set<ChannelKey> = []
        /// A channel moved onto it: the slot flipped.
        var flipped = false
        /// Watches in a row that no longer saw the slot migrating before it flipped: two give it up (one may cross
        /// the old owner's `sunsubscribe` pushes).
        var missed = 0
    }

    /// Handovers under way or holding channels, by number.
    private(set) var handovers: [UInt64: Handover] = [:]
    /// Slots whose importing node refused a handover during the migration under way: not tried again until the watch
    /// no longer sees that migration.
    private var refusedMigrations: Set<Int> = []
    private var lastHandover: UInt64 = 0

    /// Fresh maps that may still name the node that dropped a channel before the channel goes there anyway.
    static var staleMapLimit: Int { 3 }
    /// Fresh maps that may name another primary than the one a handover moved a channel to, and for how long,
    /// before it is moved there (the old owner's `sunsubscribe` was a failover, say, not the migration's flip). Both
    /// must pass: the node the maps come from may learn the flip late, by gossip.
    static var handoverMapLimit: Int { 5 }
    static var handoverMapGrace: Duration { .seconds(3) }

    private struct Registration {
        let sink: Sink
        var keys: Set<ChannelKey>
        /// Keys whose first confirmation a new subscription still waits for (empty once it is live).
        var waitingFor: Set<ChannelKey>
        var isLive = false
        /// Keys lost since the subscription went deaf, and when it did.
        var lostKeys: Set<ChannelKey> = []
        var deafSince: Instant?
    }

    private(set) var topology: ClusterTopology
    /// The node that holds classic channels and patterns (the cluster broadcasts them: any node serves).
    private(set) var classicNode: Node?
    private var entries: [ChannelKey: Entry] = [:]
    private var registrations: [ObjectIdentifier: Registration] = [:]
    /// Additions to live subscriptions not yet confirmed, by request number.
    private var additions: [UInt64: Addition] = [:]
    private struct Addition {
        let sink: Sink
        /// Keys not confirmed yet.
        var keys: Set<ChannelKey>
        /// Keys the subscription did not hold before: taken out again if the addition fails.
        var introduced: Set<ChannelKey>
    }
    enum ConnectionState: Equatable {
        case connecting, ready, lost
    }

    /// Connections asked for, and where each stands.
    private(set) var connections: [Node: ConnectionState] = [:]
    private var sequence: UInt64 = 0
    /// More `-MOVED` answers than this for one channel without a confirmation wait for a fresh map instead.
    static var redirectLimit: Int { 5 }

    init(topology: ClusterTopology) {
        self.topology = topology
    }

    // MARK: Queries

    /// The subscriptions a message on `key` from `node` goes to: none when the channel lives elsewhere now.
    func recipients(_ key: ChannelKey, from node: Node) -> [Sink] {
        guard let entry = entries[key], entry.node == node, entry.handover == nil else { return [] }
        return entry.sinks
    }

    /// The subscriptions a message on `key` from the connection of handover `id` goes to: those of a channel living
    /// there, or of one it confirmed while the old owner still serves the slot (a message may reach either node
    /// around the flip; each reaches one).
    func recipients(_ key: ChannelKey, fromHandover id: UInt64) -> [Sink] {
        guard let entry = entries[key], Self.isConfirmed(entry.phase) else { return [] }
        if entry.handover == id { return entry.sinks }
        guard let handover = handovers[id], handover.confirmed.contains(key), entry.node == handover.source else { return [] }
        return entry.sinks
    }

    /// The handover whose connection `key` lives on, if any.
    func handover(of key: ChannelKey) -> UInt64? { entries[key]?.handover }

    /// Nodes holding confirmed sharded channels (on their own connection or a handover's): the ones whose
    /// migrations are worth watching.
    var nodesToWatch: [Node] {
        Set(entries.compactMap { key, entry in
            key.kind == .shardChannel && Self.isConfirmed(entry.phase) ? entry.node : nil
        }).sorted()
    }

    /// Whether handover `id` holds `key` confirmed (tests).
    func handoverConfirmed(_ key: ChannelKey) -> Bool {
        handovers.values.contains { !$0.flipped && $0.confirmed.contains(key) }
    }

    /// The node each channel lives on (or will), for introspection and tests.
    func node(of key: ChannelKey) -> Node? { entries[key]?.node }

    /// Whether a channel waits for a map that knows where it goes, or for a node that is down: the driver keeps
    /// fetching the map until this is `false`.
    var needsTopology: Bool {
        entries.values.contains { entry in
            entry.phase == .unplaced || (entry.phase == .waitingForNode && entry.node.map { connections[$0] } == .lost)
                || entry.offMap > 0
        }
    }

    /// Subscriptions registered now.
    var subscriptionCount: Int { registrations.count }

    // MARK: Subscriptions

    /// A new subscription to `keys`: ``Action/ready(_:)`` once every one is confirmed.
    mutating func subscribe(_ sink: Sink, to keys: [ChannelKey], now: Instant) -> [Action] {
        let unique = Set(keys)
        registrations[ObjectIdentifier(sink)] = Registration(sink: sink, keys: unique, waitingFor: unique)
        var actions: [Action] = []
        for key in keys where unique.contains(key) {
            join(sink, key, &actions)
        }
        settle(sink, now: now, &actions)
        return actions
    }

    /// Adds `keys` to a live subscription; ``Action/additionFinished(request:_:)`` once they are confirmed.
    mutating func add(_ keys: [ChannelKey], to sink: Sink, request: UInt64, now: Instant) -> [Action] {
        let id = ObjectIdentifier(sink)
        guard var registration = registrations[id] else {
            return [.additionFinished(request: request, .failure(RedisError(.invalidArgument, "the subscription has ended")))]
        }
        var actions: [Action] = []
        var pending = Set<ChannelKey>()
        var introduced = Set<ChannelKey>()
        for key in keys {
            if registration.keys.insert(key).inserted {
                introduced.insert(key)
                registrations[id] = registration
                join(sink, key, &actions)
                registration = registrations[id]!
            }
            if entries[key].map({ !$0.sinks.contains { $0 === sink } || !Self.isConfirmed($0.phase) }) ?? true {
                pending.insert(key)
            }
        }
        registrations[id] = registration
        if pending.isEmpty {
            actions.append(.additionFinished(request: request, .success(())))
        } else {
            additions[request] = Addition(sink: sink, keys: pending, introduced: introduced)
        }
        return actions
    }

    /// Takes `keys` out of a subscription (all of them when it ends: then pass every key it holds and `ends`).
    mutating func remove(_ keys: [ChannelKey], from sink: Sink, ends: Bool = false, now: Instant) -> [Action] {
        let id = ObjectIdentifier(sink)
        var actions: [Action] = []
        let removing = Set(keys)
        for (request, var addition) in additions where addition.sink === sink {
            addition.keys.subtract(removing)
            if ends {
                additions[request] = nil
            } else if addition.keys.isEmpty {
                additions[request] = nil
                actions.append(.additionFinished(request: request, .success(())))
            } else {
                additions[request] = addition
            }
        }
        if var registration = registrations[id] {
            registration.keys.subtract(removing)
            registration.waitingFor.subtract(removing)
            registration.lostKeys.subtract(removing)
            registrations[id] = registration
        }
        for key in removing { leave(sink, key, &actions) }
        if ends {
            registrations[id] = nil
        } else {
            settle(sink, now: now, &actions)
        }
        collectIdleConnections(&actions)
        return actions.sortedAdditionsLast()
    }

    /// Closing: UNSUBSCRIBE everything subscribed. Registrations and placements stay, so the messages that arrive
    /// before the acknowledgements are still delivered; the owner ignores everything else from now on.
    mutating func unsubscribeAll() -> [Action] {
        var actions: [Action] = []
        for (key, entry) in entries.sorted(by: { Self.order($0.key, $1.key) }) {
            guard let node = entry.node else { continue }
            switch entry.phase {
            case .subscribing, .subscribed:
                sequence += 1
                actions.append(.send(Command(node: node, key: key, subscribe: false, sequence: sequence, handover: entry.handover)))
            case .unplaced, .waitingForNode: break
            }
        }
        return actions
    }

    /// Whether `sink` misses messages right now: a channel it held was lost and is not confirmed again yet.
    func isDeaf(_ sink: Sink) -> Bool {
        registrations[ObjectIdentifier(sink)]?.deafSince != nil
    }

    /// Every subscription, each once; everything forgotten (the subscriber closed).
    mutating func removeAll() -> [Sink] {
        let all = registrations.values.map(\.sink)
        entries = [:]
        handovers = [:]
        registrations = [:]
        additions = [:]
        return all
    }

    // MARK: Server answers

    /// The server confirmed `command`.
    mutating func acknowledged(_ command: Command, now: Instant) -> [Action] {
        guard command.subscribe, let entry = entries[command.key], entry.node == command.node,
              entry.handover == command.handover, entry.phase == .subscribing(command.sequence)
        else { return [] }
        return confirm(command.key, sequence: command.sequence, now: now)
    }

    /// `key` is confirmed where it is placed, by the answer to its `SSUBSCRIBE` number `sequence`.
    private mutating func confirm(_ key: ChannelKey, sequence: UInt64, now: Instant) -> [Action] {
        guard var entry = entries[key] else { return [] }
        entry.phase = .subscribed(sequence)
        entry.redirects = 0
        entry.sinks += entry.joining
        entry.joining = []
        entries[key] = entry
        var actions: [Action] = []
        for sink in entry.sinks {
            let id = ObjectIdentifier(sink)
            registrations[id]?.waitingFor.remove(key)
            registrations[id]?.lostKeys.remove(key)
        }
        for (request, var addition) in additions.sorted(by: { $0.key < $1.key })
        where addition.keys.remove(key) != nil {
            if addition.keys.isEmpty {
                additions[request] = nil
                actions.append(.additionFinished(request: request, .success(())))
            } else {
                additions[request] = addition
            }
        }
        for sink in entry.sinks { settle(sink, now: now, &actions) }
        return actions.sortedAdditionsLast()
    }

    /// The server answered `command` with an error.
    mutating func refused(_ command: Command, _ error: RedisError, now: Instant) -> [Action] {
        guard command.subscribe, var entry = entries[command.key], entry.node == command.node,
              entry.handover == command.handover, entry.phase == .subscribing(command.sequence)
        else { return [] }
        var actions: [Action] = []
        let text = error.message
        if let redirection = ClusterRedirection(text) {
            // The slot lives elsewhere: correct the map, follow, and fetch the whole map (more slots moved, likely).
            if !redirection.ask { topology.redirect(slot: redirection.slot, to: redirection.node) }
            entry.redirects += 1
            entries[command.key] = entry
            actions.append(.refreshTopology)
            if entry.redirects <= Self.redirectLimit && !redirection.ask {
                place(command.key, &actions)
            } else {
                entries[command.key]?.phase = .unplaced
            }
            return actions
        }
        if ClusterRedirection.isTransient(text) {  // CLUSTERDOWN, TRYAGAIN, LOADING: the cluster is changing; try again later
            entries[command.key]?.phase = .unplaced
            return [.refreshTopology]
        }
        // Refused for good (NOPERM): additions that asked for it fail and are undone; subscriptions that held it
        // before end.
        entry.phase = .unplaced
        entries[command.key] = entry
        var undone: [(Sink, Set<ChannelKey>)] = []
        for (request, addition) in additions.sorted(by: { $0.key < $1.key }) where addition.keys.contains(command.key) {
            additions[request] = nil
            actions.append(.additionFinished(request: request, .failure(error)))
            undone.append((addition.sink, addition.introduced))
        }
        for sink in entry.sinks + entry.joining {
            let id = ObjectIdentifier(sink)
            guard let registration = registrations[id] else { continue }
            if let (_, introduced) = undone.first(where: { $0.0 === sink }), introduced.contains(command.key) {
                continue  // it came with a failed addition: undone below
            }
            actions.append(.fail(sink, error))
            actions += remove(Array(registration.keys), from: sink, ends: true, now: now)
        }
        for (sink, introduced) in undone where registrations[ObjectIdentifier(sink)] != nil {
            actions += remove(Array(introduced), from: sink, now: now)
        }
        return actions
    }

    /// The server dropped `key` on `node` by itself (`sunsubscribe` after its slot moved or its primary failed over),
    /// on the node's own connection or on the connection of handover `handover`.
    mutating func serverUnsubscribed(_ key: ChannelKey, on node: Node, handover: UInt64? = nil, now: Instant) -> [Action] {
        guard let entry = entries[key], entry.node == node, entry.handover == handover else { return [] }
        switch entry.phase {
        case .subscribed, .subscribing: break
        case .unplaced, .waitingForNode: return []
        }
        if let moved = handOver(key, from: node, now: now) { return moved }
        var actions: [Action] = [.refreshTopology]
        deafen(key, RedisError(.connectionClosed, "the server ended the subscription (its slot moved)"), now: now, &actions)
        leaveHandover(key, unsubscribe: false, &actions)
        if route(key) == node {  // the map has not caught up: wait for a fresh one
            entries[key]?.phase = .unplaced
            entries[key]?.droppedBy = (node, 0)
        } else {
            place(key, &actions)
        }
        return actions
    }

    // MARK: Connections

    /// The connection to `node` is ready (first connect or reconnect): channels waiting for it are subscribed.
    mutating func connectionReady(_ node: Node) -> [Action] {
        guard connections[node] != nil else { return [] }
        connections[node] = .ready
        var actions: [Action] = []
        for (key, entry) in entries.sorted(by: { Self.order($0.key, $1.key) })
        where entry.node == node && entry.handover == nil && entry.phase == .waitingForNode {
            if key.kind != .shardChannel && classicNode == nil { classicNode = node }
            if route(key) != node {
                place(key, &actions)  // the map (or the choice of classic node) moved it meanwhile
            } else {
                send(key, to: node, &actions)
            }
        }
        return actions
    }

    /// The connection to `node` was lost (it retries by itself): its channels are deaf until confirmed again, there
    /// or wherever a fresh map puts them.
    mutating func connectionLost(_ node: Node, _ error: RedisError, now: Instant) -> [Action] {
        guard connections[node] != nil else { return [] }
        connections[node] = .lost
        var actions: [Action] = [.refreshTopology]
        for (key, entry) in entries.sorted(by: { Self.order($0.key, $1.key) }) where entry.node == node && entry.handover == nil {
            switch entry.phase {
            case .subscribed, .subscribing:
                deafen(key, error, now: now, &actions)
                entries[key]?.phase = .waitingForNode
            case .unplaced, .waitingForNode: break
            }
        }
        if classicNode == node { classicNode = nil }  // classic channels go to another node on the next map
        return actions
    }

    /// The connection to `node` closed for good: its reconnect policy gave up (its channels wait for a map that
    /// puts them elsewhere), or, when `permanent`, an error no retry fixes (a refused password or certificate: every
    /// node has the same settings, so the subscriptions on its channels end with `error`).
    mutating func connectionClosed(_ node: Node, _ error: RedisError, permanent: Bool = false, now: Instant) -> [Action] {
        guard connections.removeValue(forKey: node) != nil else { return [] }
        var actions: [Action] = []
        if classicNode == node { classicNode = nil }
        if permanent {
            var failed: [ObjectIdentifier: Sink] = [:]
            for entry in entries.values where entry.node == node && entry.handover == nil {
                for sink in entry.sinks + entry.joining { failed[ObjectIdentifier(sink)] = sink }
            }
            for (request, addition) in additions.sorted(by: { $0.key < $1.key }) where failed[ObjectIdentifier(addition.sink)] != nil {
                additions[request] = nil
                actions.append(.additionFinished(request: request, .failure(error)))
            }
            for sink in failed.values.sorted(by: { ObjectIdentifier($0) < ObjectIdentifier($1) }) {
                guard let registration = registrations[ObjectIdentifier(sink)] else { continue }
                actions.append(.fail(sink, error))
                actions += remove(Array(registration.keys), from: sink, ends: true, now: now)
            }
            for key in entries.keys where entries[key]?.node == node && entries[key]?.handover == nil {  // nobody is left on them
                entries[key]?.phase = .unplaced
                entries[key]?.node = nil
            }
            return actions
        }
        actions.append(.refreshTopology)
        for (key, entry) in entries.sorted(by: { Self.order($0.key, $1.key) }) where entry.node == node && entry.handover == nil {
            if entry.phase != .waitingForNode && entry.phase != .unplaced { deafen(key, error, now: now, &actions) }
            entries[key]?.phase = .unplaced
            entries[key]?.node = nil
        }
        return actions
    }

    /// A fresh map: channels that wait for a node go where it says, channels on a node that left the cluster move;
    /// nodes without channels are given up.
    mutating func topologyUpdated(_ map: ClusterTopology, now: Instant) -> [Action] {
        topology = map
        var actions: [Action] = []
        if let node = classicNode, !map.nodes.contains(node) { classicNode = nil }
        for (key, entry) in entries.sorted(by: { Self.order($0.key, $1.key) }) {
            entries[key]?.redirects = 0
            switch entry.phase {
            case .unplaced:
                if let dropped = entry.droppedBy, route(key) == dropped.node, dropped.maps < Self.staleMapLimit {
                    entries[key]?.droppedBy = (dropped.node, dropped.maps + 1)  // still stale: ask again
                    continue
                }
                entries[key]?.droppedBy = nil
                place(key, &actions)
            case .waitingForNode:
                if route(key) != entry.node { place(key, &actions) }
            case .subscribing, .subscribed:
                // The server tells when a channel it holds moves (sunsubscribe, or the connection's loss), but not
                // when its node left the cluster (forgotten by the others, `redis-cli --cluster del-node`): it still
                // runs, and nothing published in the cluster reaches it any more.
                guard let node = entry.node else { break }
                if !map.nodes.contains(node) {
                    deafen(key, RedisError(.connectionClosed, "its node \(node) left the cluster"), now: now, &actions)
                    place(key, &actions)
                } else if entry.handover != nil, let owner = route(key), owner != node {
                    // A handover took it to `node`, and the maps say another primary serves its slot: confirmed
                    // after some maps and some time (a node may learn the flip late), then moved where they say.
                    let since = entry.offMapSince ?? now
                    if entry.offMap + 1 >= Self.handoverMapLimit && now - since >= Self.handoverMapGrace {
                        deafen(key, RedisError(.connectionClosed, "its slot is served by another node than \(node)"), now: now, &actions)
                        place(key, &actions)
                    } else {
                        entries[key]?.offMap += 1
                        entries[key]?.offMapSince = since
                    }
                } else {
                    entries[key]?.offMap = 0
                    entries[key]?.offMapSince = nil
                }
            }
        }
        collectIdleConnections(&actions)
        return actions
    }

    // MARK: Handovers

    /// What the watch of `source` saw (its `CLUSTER NODES`): the slots it is migrating now, each with the node
    /// importing it. A slot whose channels are confirmed on `source` gets a handover; a handover whose slot is no
    /// longer migrating before it flipped (the migration was given up), or migrates to another node now, is closed.
    mutating func migrationsObserved(_ migrating: [Int: Node], on source: Node) -> [Action] {
        var actions: [Action] = []
        for (id, handover) in handovers.sorted(by: { $0.key < $1.key }) where handover.source == source && !handover.flipped {
            if let target = migrating[handover.slot], target == handover.target {
                handovers[id]?.missed = 0
            } else if migrating[handover.slot] != nil || handover.missed >= 1 {
                handovers[id] = nil
                actions.append(.closeHandover(id: id))
            } else {
                handovers[id]?.missed += 1  // once: this watch may have crossed the flip's `sunsubscribe` pushes
            }
        }
        // A refused handover is not tried again during the same migration (the node would refuse it every tick).
        refusedMigrations = refusedMigrations.filter { migrating[$0] != nil }
        var bySlot: [Int: [ChannelKey]] = [:]
        if !migrating.isEmpty {
            for (key, entry) in entries where key.kind == .shardChannel && entry.node == source && Self.isConfirmed(entry.phase) {
                let slot = ClusterSlot.of(key.name)
                // Not one a handover already waits to take over (a watch answer older than part of the flip).
                guard migrating[slot] != nil, !handovers.contains(where: { isWaiting(key, on: $0.key, $0.value) }) else { continue }
                bySlot[slot, default: []].append(key)
            }
        }
        for (slot, keys) in bySlot.sorted(by: { $0.key < $1.key }) where !refusedMigrations.contains(slot) {
            guard let target = migrating[slot], target != source,
                  !handovers.values.contains(where: { $0.slot == slot && $0.source == source && !$0.flipped })
            else { continue }
            lastHandover += 1
            handovers[lastHandover] = Handover(slot: slot, source: source, target: target, keys: keys.sorted(by: Self.order))
            actions.append(.openHandover(id: lastHandover, target: target))
        }
        return actions
    }

    /// The handover's connection is ready: its channels still confirmed on the old owner are asked for, `ASKING`
    /// first.
    mutating func handoverReady(_ id: UInt64) -> [Action] {
        guard var handover = handovers[id], handover.sequence == nil else { return [] }
        handover.keys = handover.keys.filter { isWaiting($0, on: id, handover) && Self.isConfirmed(entries[$0]!.phase) }
        guard !handover.keys.isEmpty else {
            handovers[id] = nil
            return [.closeHandover(id: id)]
        }
        sequence += 1
        handover.sequence = sequence
        handovers[id] = handover
        return [.sendHandover(id: id, keys: handover.keys, sequence: sequence)]
    }

    /// The importing node confirmed `key` of the handover's `SSUBSCRIBE` number `sequence`.
    mutating func handoverAcknowledged(_ id: UInt64, key: ChannelKey, sequence: UInt64, now: Instant) -> [Action] {
        guard var handover = handovers[id], handover.sequence == sequence, handover.keys.contains(key) else { return [] }
        handover.confirmed.insert(key)
        handovers[id] = handover
        // Its slot flipped before this answer came: it moved onto the handover deaf, and is confirmed now.
        guard let entry = entries[key], entry.handover == id, entry.phase == .subscribing(sequence) else { return [] }
        return confirm(key, sequence: sequence, now: now)
    }

    /// The importing node dropped `key` on the handover's connection before it moved there (that node failed over,
    /// say): the handover no longer holds it, and it takes the ordinary path when its old owner drops it.
    mutating func handoverUnsubscribed(_ id: UInt64, key: ChannelKey) -> [Action] {
        guard handovers[id]?.keys.contains(key) == true, entries[key]?.handover != id else { return [] }
        handovers[id]?.keys.removeAll { $0 == key }
        handovers[id]?.confirmed.remove(key)
        var actions: [Action] = []
        releaseHandoverIfIdle(id, &actions)
        return actions
    }

    /// The handover failed: its `ASKING` or `SSUBSCRIBE` was refused, or its connection ended. Channels living on it
    /// go where the map says, with a gap; those still on the old owner stay there.
    mutating func handoverFailed(_ id: UInt64, _ error: RedisError, refused: Bool = false, now: Instant) -> [Action] {
        guard let handover = handovers.removeValue(forKey: id) else { return [] }
        if refused && !handover.flipped { refusedMigrations.insert(handover.slot) }
        var actions: [Action] = [.closeHandover(id: id)]
        for (key, entry) in entries.sorted(by: { Self.order($0.key, $1.key) }) where entry.handover == id {
            deafen(key, error, now: now, &actions)
            entries[key]?.handover = nil  // its connection is gone: nothing to unsubscribe there
            place(key, &actions)
        }
        actions.append(.refreshTopology)
        collectIdleConnections(&actions)
        return actions
    }

    /// Whether `key` is one of handover `id`'s channels that still lives on the old owner (waits for the flip).
    private func isWaiting(_ key: ChannelKey, on id: UInt64, _ handover: Handover) -> Bool {
        guard handover.keys.contains(key), let entry = entries[key] else { return false }
        return entry.node == handover.source && entry.handover != id
    }

    /// `key`'s old owner dropped it: when a handover holds it on the importing node, it lives there now, with no gap
    /// if confirmed (else deaf until its confirmation). `nil` when no handover takes it.
    private mutating func handOver(_ key: ChannelKey, from node: Node, now: Instant) -> [Action]? {
        guard key.kind == .shardChannel else { return nil }
        let slot = ClusterSlot.of(key.name)
        // The oldest handover that asked for it (a later one, from a stale watch answer, may not have yet).
        guard let (id, handover) = handovers.sorted(by: { $0.key < $1.key }).first(where: {
            $0.value.slot == slot && $0.value.source == node && $0.value.sequence != nil && isWaiting(key, on: $0.key, $0.value)
        }).map({ ($0.key, $0.value) }),
              let number = handover.sequence
        else { return nil }
        var actions: [Action] = [.refreshTopology, .moved(key, from: node, to: handover.target)]
        leaveHandover(key, unsubscribe: false, &actions)  // the one it lived on, if any: that node just dropped it
        handovers[id]?.flipped = true
        entries[key]?.node = handover.target
        entries[key]?.handover = id
        entries[key]?.redirects = 0
        entries[key]?.droppedBy = nil
        entries[key]?.offMap = 0
        entries[key]?.offMapSince = nil
        leavePendingHandovers(key, &actions)  // any other handover that waited for it
        if handover.confirmed.contains(key) {
            actions += confirm(key, sequence: number, now: now)
        } else {
            deafen(key, RedisError(.connectionClosed, "the server ended the subscription (its slot moved)"), now: now, &actions)
            entries[key]?.phase = .subscribing(number)
        }
        collectIdleConnections(&actions)
        return actions
    }

    /// `key` leaves the handover connection it lived on (it moves again): the handover closes once nothing uses it.
    /// With `unsubscribe`, a connection that stays open is told (`SUNSUBSCRIBE`), so it stops receiving the channel.
    private mutating func leaveHandover(_ key: ChannelKey, unsubscribe: Bool, _ actions: inout [Action]) {
        guard let id = entries[key]?.handover, let entry = entries[key] else { return }
        entries[key]?.handover = nil
        entries[key]?.offMap = 0
        entries[key]?.offMapSince = nil
        handovers[id]?.keys.removeAll { $0 == key }
        handovers[id]?.confirmed.remove(key)
        releaseHandoverIfIdle(id, &actions)
        if unsubscribe, let handover = handovers[id], entry.phase != .unplaced, entry.phase != .waitingForNode {
            sequence += 1
            actions.append(.send(Command(node: handover.target, key: key, subscribe: false, sequence: sequence, handover: id)))
        }
    }

    /// `key` leaves its old owner by the ordinary path: the handovers that waited to take it over no longer do.
    private mutating func leavePendingHandovers(_ key: ChannelKey, _ actions: inout [Action]) {
        for (id, handover) in handovers.sorted(by: { $0.key < $1.key }) where handover.keys.contains(key) {
            guard entries[key]?.handover != id else { continue }
            handovers[id]?.keys.removeAll { $0 == key }
            handovers[id]?.confirmed.remove(key)
            releaseHandoverIfIdle(id, &actions)
        }
    }

    /// Closes handover `id` when no channel lives on it and none waits for it on the old owner.
    private mutating func releaseHandoverIfIdle(_ id: UInt64, _ actions: inout [Action]) {
        guard let handover = handovers[id] else { return }
        let used = entries.values.contains { $0.handover == id }
        let waiting = handover.keys.contains { isWaiting($0, on: id, handover) }
        // Kept while a channel lives on it, and until the flip while it has channels to take over (after the flip,
        // while some still wait for their old owner's `sunsubscribe`).
        let needed = used || (handover.flipped ? waiting : !handover.keys.isEmpty)
        guard !needed else { return }
        handovers[id] = nil
        actions.append(.closeHandover(id: id))
    }

    // MARK: Internals

    private mutating func join(_ sink: Sink, _ key: ChannelKey, _ actions: inout [Action]) {
        var entry = entries[key] ?? Entry()
        let isNew = entries[key] == nil
        if case .subscribed = entry.phase {
            entry.sinks.append(sink)
            registrations[ObjectIdentifier(sink)]?.waitingFor.remove(key)
        } else {
            entry.joining.append(sink)
        }
        entries[key] = entry
        if isNew { place(key, &actions) }
    }

    private mutating func leave(_ sink: Sink, _ key: ChannelKey, _ actions: inout [Action]) {
        guard var entry = entries[key] else { return }
        entry.sinks.removeAll { $0 === sink }
        entry.joining.removeAll { $0 === sink }
        guard entry.sinks.isEmpty && entry.joining.isEmpty else {
            entries[key] = entry
            return
        }
        entries[key] = nil
        if let node = entry.node, connections[node] == .ready || entry.handover != nil {
            switch entry.phase {
            case .subscribing, .subscribed:
                sequence += 1
                actions.append(.send(Command(node: node, key: key, subscribe: false, sequence: sequence, handover: entry.handover)))
            case .unplaced, .waitingForNode: break
            }
        }
        // A handover that was to take it over, or that it lived on, may have nothing left to do.
        for (id, var handover) in handovers.sorted(by: { $0.key < $1.key }) where handover.keys.contains(key) {
            handover.keys.removeAll { $0 == key }
            handover.confirmed.remove(key)
            handovers[id] = handover
            releaseHandoverIfIdle(id, &actions)
        }
    }

    /// Where `key` belongs now: its slot's primary, or the classic node.
    private mutating func route(_ key: ChannelKey) -> Node? {
        if key.kind == .shardChannel { return topology.primary(ofSlot: ClusterSlot.of(key.name)) }
        if classicNode == nil {
            // Prefer a node already connected, then any primary of the map.
            let primaries = topology.primaries
            classicNode = primaries.first { connections[$0] == .ready }
                ?? primaries.first { connections[$0] != .lost } ?? primaries.first
        }
        return classicNode
    }

    /// Sends `key`'s SUBSCRIBE where it belongs, asking for the connection if needed.
    private mutating func place(_ key: ChannelKey, _ actions: inout [Action]) {
        leaveHandover(key, unsubscribe: true, &actions)
        leavePendingHandovers(key, &actions)
        entries[key]?.offMap = 0
        entries[key]?.offMapSince = nil
        guard let node = route(key) else {
            entries[key]?.phase = .unplaced
            entries[key]?.node = nil
            actions.append(.refreshTopology)
            return
        }
        if let previous = entries[key]?.node, previous != node { actions.append(.moved(key, from: previous, to: node)) }
        entries[key]?.node = node
        switch connections[node] {
        case .ready?:
            send(key, to: node, &actions)
        case .connecting?, .lost?:
            entries[key]?.phase = .waitingForNode
        case nil:
            entries[key]?.phase = .waitingForNode
            connections[node] = .connecting
            actions.append(.connect(node))
        }
    }

    private mutating func send(_ key: ChannelKey, to node: Node, _ actions: inout [Action]) {
        sequence += 1
        entries[key]?.node = node
        entries[key]?.phase = .subscribing(sequence)
        actions.append(.send(Command(node: node, key: key, subscribe: true, sequence: sequence)))
    }

    /// `key` no longer receives: its confirmed subscriptions are told (once per gap).
    private mutating func deafen(_ key: ChannelKey, _ cause: RedisError, now: Instant, _ actions: inout [Action]) {
        guard let entry = entries[key] else { return }
        for sink in entry.sinks {
            let id = ObjectIdentifier(sink)
            guard var registration = registrations[id] else { continue }
            guard registration.isLive else {
                // Not live yet: it joined a channel that was confirmed, which is not any more. Its subscribe waits
                // for the channel again instead of returning deaf to it.
                registrations[id]?.waitingFor.insert(key)
                continue
            }
            registration.lostKeys.insert(key)
            if registration.deafSince == nil {
                registration.deafSince = now
                actions.append(.lost(sink, cause: cause))
            }
            registrations[id] = registration
        }
    }

    /// A subscription whose channels are all confirmed becomes live, or is back after a gap.
    private mutating func settle(_ sink: Sink, now: Instant, _ actions: inout [Action]) {
        let id = ObjectIdentifier(sink)
        guard var registration = registrations[id] else { return }
        if !registration.isLive {
            guard registration.waitingFor.isEmpty else { return }
            registration.isLive = true
            registrations[id] = registration
            actions.append(.ready(sink))
        } else if let since = registration.deafSince, registration.lostKeys.isEmpty {
            registration.deafSince = nil
            registrations[id] = registration
            actions.append(.restored(sink, gap: now - since))
        }
    }

    /// Nodes no channel lives on (or waits for) are given up.
    private mutating func collectIdleConnections(_ actions: inout [Action]) {
        let used = Set(entries.values.filter { $0.handover == nil }.compactMap(\.node))
        for node in connections.keys.sorted() where !used.contains(node) {
            connections[node] = nil
            actions.append(.disconnect(node))
        }
    }

    private static func isConfirmed(_ phase: Phase) -> Bool {
        if case .subscribed = phase { return true }
        return false
    }

    private static func order(_ a: ChannelKey, _ b: ChannelKey) -> Bool {
        a.kind.order != b.kind.order ? a.kind.order < b.kind.order : a.name.lexicographicallyPrecedes(b.name)
    }
}

extension Array {
    /// Additions settle after the subscriptions' own news (a caller that resumes sees the state it waited for).
    fileprivate func sortedAdditionsLast<Sink>() -> Self where Element == ClusterSubscriptionStateMachine<Sink>.Action {
        let isAddition = { (action: Element) -> Bool in
            if case .additionFinished = action { return true }
            return false
        }
        return filter { !isAddition($0) } + filter(isAddition)
    }
}
