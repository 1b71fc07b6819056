import Testing
@testable import RedisPubSub

@Suite("ClusterSubscriptionStateMachine: channels placed by slot and followed through the cluster's changes")
struct ClusterSubscriptionStateMachineTests {
    typealias Machine = ClusterSubscriptionStateMachine<FakeSink>
    typealias Action = Machine.Action

    let nodeA = ClusterNodeAddress(host: "127.0.0.1", port: 7001)
    let nodeB = ClusterNodeAddress(host: "127.0.0.1", port: 7002)
    let nodeC = ClusterNodeAddress(host: "127.0.0.1", port: 7003)
    let now = ContinuousClock.now

    /// A map: slots 0-8191 on A, 8192-16383 on B (C serves nothing).
    func map(_ low: ClusterNodeAddress, _ high: ClusterNodeAddress) -> ClusterTopology {
        ClusterTopology(shards: [
            .init(primary: low, replicas: [], slots: [0...8191]),
            .init(primary: high, replicas: [], slots: [8192...16383]),
        ])
    }

    /// A sharded channel whose slot is below 8192 (`low`) or not.
    func shard(low: Bool, _ index: Int = 0) -> ChannelKey {
        var found: [ChannelKey] = []
        var counter = 0
        while found.count <= index {
            let key = ChannelKey(kind: .shardChannel, name: Array("ch\(counter)".utf8))
            if (ClusterSlot.of(key.name) < 8192) == low { found.append(key) }
            counter += 1
        }
        return found[index]
    }

    func sends(_ actions: [Action]) -> [Machine.Command] {
        actions.compactMap { if case .send(let command) = $0 { command } else { nil } }
    }

    func connects(_ actions: [Action]) -> [ClusterNodeAddress] {
        actions.compactMap { if case .connect(let node) = $0 { node } else { nil } }
    }

    func disconnects(_ actions: [Action]) -> [ClusterNodeAddress] {
        actions.compactMap { if case .disconnect(let node) = $0 { node } else { nil } }
    }

    func has(_ actions: [Action], _ check: (Action) -> Bool) -> Bool { actions.contains(where: check) }

    func isReady(_ action: Action, _ sink: FakeSink) -> Bool { if case .ready(let s) = action { s === sink } else { false } }
    func isLost(_ action: Action, _ sink: FakeSink) -> Bool { if case .lost(let s, _) = action { s === sink } else { false } }
    func isRestored(_ action: Action, _ sink: FakeSink) -> Bool {
        if case .restored(let s, _) = action { s === sink } else { false }
    }
    func isRefresh(_ action: Action) -> Bool { if case .refreshTopology = action { true } else { false } }

    /// A machine with `sink` subscribed and confirmed on `keys`, every node connected.
    func subscribed(_ sink: FakeSink, _ keys: [ChannelKey]) -> Machine {
        var machine = Machine(topology: map(nodeA, nodeB))
        var actions = machine.subscribe(sink, to: keys, now: now)
        for node in connects(actions) { actions += machine.connectionReady(node) }
        for command in sends(actions) { _ = machine.acknowledged(command, now: now) }
        return machine
    }

    @Test func channelsGoToTheirSlotsPrimaryWithOneCommandEachAndOneConnectionPerNode() {
        var machine = Machine(topology: map(nodeA, nodeB))
        let sink = FakeSink()
        let keys = [shard(low: true, 0), shard(low: true, 1), shard(low: false, 0)]
        let actions = machine.subscribe(sink, to: keys, now: now)
        #expect(connects(actions).sorted() == [nodeA, nodeB])
        #expect(sends(actions).isEmpty)  // nothing is written before a node's connection is ready
        let onA = machine.connectionReady(nodeA)
        #expect(sends(onA).map(\.key) == [keys[0], keys[1]].sorted { $0.name.lexicographicallyPrecedes($1.name) })
        #expect(sends(onA).allSatisfy { $0.node == nodeA && $0.subscribe })
        let onB = machine.connectionReady(nodeB)
        #expect(sends(onB).map(\.key) == [keys[2]])
        var ready: [Action] = []
        for command in sends(onA) + sends(onB) { ready += machine.acknowledged(command, now: now) }
        #expect(ready.filter { isReady($0, sink) }.count == 1)  // once, after the last acknowledgement
        #expect(machine.recipients(keys[2], from: nodeB).count == 1)
        #expect(machine.recipients(keys[2], from: nodeA).isEmpty)  // a channel hears only from its node
    }

    @Test func aMessageBeforeTheAcknowledgementGoesToNobody() {
        var machine = Machine(topology: map(nodeA, nodeB))
        let sink = FakeSink()
        let key = shard(low: true)
        _ = machine.subscribe(sink, to: [key], now: now)
        let sent = sends(machine.connectionReady(nodeA))
        #expect(machine.recipients(key, from: nodeA).isEmpty)
        _ = machine.acknowledged(sent[0], now: now)
        #expect(machine.recipients(key, from: nodeA).count == 1)
    }

    @Test func aServerDroppedChannelWaitsForAMapThatNoLongerNamesTheNodeThatDroppedIt() {
        let sink = FakeSink()
        let key = shard(low: true)
        var machine = subscribed(sink, [key])
        let dropped = machine.serverUnsubscribed(key, on: nodeA, now: now)
        #expect(dropped.contains { isLost($0, sink) })
        #expect(dropped.contains(where: isRefresh))
        #expect(sends(dropped).isEmpty)  // the map still says A, which gave it up: not there again
        #expect(machine.needsTopology)
        // A stale map again: still waiting.
        #expect(sends(machine.topologyUpdated(map(nodeA, nodeB), now: now)).isEmpty)
        // The map that knows: C serves the low slots now.
        let moved = machine.topologyUpdated(map(nodeC, nodeB), now: now)
        #expect(connects(moved) == [nodeC])
        #expect(disconnects(moved) == [nodeA])  // A holds no channel any more
        #expect(moved.contains { if case .moved(let k, let from, let to) = $0 { k == key && from == nodeA && to == nodeC } else { false } })
        let sent = sends(machine.connectionReady(nodeC))
        #expect(sent.map(\.node) == [nodeC])
        let restored = machine.acknowledged(sent[0], now: now + .milliseconds(30))
        #expect(restored.contains { if case .restored(let s, let gap) = $0 { s === sink && gap == .milliseconds(30) } else { false } })
        #expect(!machine.needsTopology)
    }

    @Test func aMapThatKeepsNamingTheDroppingNodeIsBelievedAfterALimit() {
        let sink = FakeSink()
        let key = shard(low: true)
        var machine = subscribed(sink, [key])
        _ = machine.serverUnsubscribed(key, on: nodeA, now: now)
        for _ in 0..<Machine.staleMapLimit {
            #expect(sends(machine.topologyUpdated(map(nodeA, nodeB), now: now)).isEmpty)
        }
        #expect(sends(machine.topologyUpdated(map(nodeA, nodeB), now: now)).map(\.node) == [nodeA])  // migrated back, say
    }

    @Test func aDropWhoseNewOwnerTheMapKnowsGoesThereAtOnce() {
        let sink = FakeSink()
        let key = shard(low: true)
        var machine = subscribed(sink, [key])
        // Learned first (a MOVED elsewhere, say): B serves every slot, A is still a node of the cluster.
        let migrated = ClusterTopology(shards: [
            .init(primary: nodeB, replicas: [], slots: [0...16383]), .init(primary: nodeA, replicas: [], slots: []),
        ])
        #expect(sends(machine.topologyUpdated(migrated, now: now)).isEmpty)  // A tells when it drops the channel
        let actions = machine.serverUnsubscribed(key, on: nodeA, now: now)
        #expect(connects(actions) == [nodeB])  // no wait for a map: B's connection is asked for at once
        #expect(sends(machine.connectionReady(nodeB)).map(\.node) == [nodeB])
    }

    @Test func MOVEDCorrectsTheMapAndSendsToTheNodeNamedThenAsksForTheWholeMap() {
        var machine = Machine(topology: map(nodeA, nodeB))
        let sink = FakeSink()
        let key = shard(low: true)
        _ = machine.subscribe(sink, to: [key], now: now)
        let sent = sends(machine.connectionReady(nodeA))
        let slot = ClusterSlot.of(key.name)
        let error = RedisError(.serverError, "MOVED \(slot) 127.0.0.1:7002")
        let actions = machine.refused(sent[0], error, now: now)
        #expect(actions.contains(where: isRefresh))
        #expect(sends(actions).isEmpty && connects(actions) == [nodeB])  // B's connection is opened first
        #expect(machine.topology.primary(ofSlot: slot) == nodeB)
        let onB = sends(machine.connectionReady(nodeB))
        #expect(onB.map(\.key) == [key])
        #expect(machine.acknowledged(onB[0], now: now).contains { isReady($0, sink) })
        // A stale acknowledgement of the first command changes nothing.
        #expect(machine.acknowledged(sent[0], now: now).isEmpty)
    }

    @Test func redirectionsWithoutEndWaitForAFreshMap() {
        var machine = Machine(topology: map(nodeA, nodeB))
        let sink = FakeSink()
        let key = shard(low: true)
        let slot = ClusterSlot.of(key.name)
        _ = machine.subscribe(sink, to: [key], now: now)
        var sent = sends(machine.connectionReady(nodeA))
        var hops = 0
        while let command = sent.first, hops < 20 {
            let next = command.node == nodeA ? "127.0.0.1:7002" : "127.0.0.1:7001"
            var actions = machine.refused(command, RedisError(.serverError, "MOVED \(slot) \(next)"), now: now)
            for node in connects(actions) { actions += machine.connectionReady(node) }
            sent = sends(actions)
            hops += 1
        }
        #expect(hops == Machine.redirectLimit + 1)  // then it stops and waits
        #expect(machine.needsTopology)
    }

    @Test func aRefusedChannelEndsTheSubscriptionsHoldingItOnly() {
        var machine = Machine(topology: map(nodeA, nodeB))
        let holder = FakeSink(), other = FakeSink()
        let key = shard(low: true, 0), elsewhere = shard(low: false, 0)
        var actions = machine.subscribe(holder, to: [key], now: now) + machine.subscribe(other, to: [elsewhere], now: now)
        actions += machine.connectionReady(nodeA) + machine.connectionReady(nodeB)
        let commands = sends(actions)
        let refused = commands.first { $0.key == key }!
        let outcome = machine.refused(refused, RedisError(.permissionDenied, "NOPERM no access"), now: now)
        #expect(outcome.contains { if case .fail(let s, let error) = $0 { s === holder && error.code == .permissionDenied } else { false } })
        #expect(!outcome.contains { if case .fail(let s, _) = $0 { s === other } else { false } })
        #expect(disconnects(outcome) == [nodeA])
        #expect(machine.subscriptionCount == 1)
    }

    @Test func aLostNodeDeafensItsChannelsAndItsReconnectResubscribesThem() {
        let sink = FakeSink()
        let key = shard(low: true), stays = shard(low: false)
        var machine = subscribed(sink, [key, stays])
        let lost = machine.connectionLost(nodeA, RedisError(.connectionClosed, "gone"), now: now)
        #expect(lost.filter { isLost($0, sink) }.count == 1)
        #expect(lost.contains(where: isRefresh))
        #expect(machine.needsTopology)
        #expect(machine.recipients(stays, from: nodeB).count == 1)  // the other node's channel still hears
        let back = machine.connectionReady(nodeA)
        #expect(sends(back).map(\.key) == [key])
        #expect(machine.acknowledged(sends(back)[0], now: now).contains { isRestored($0, sink) })
    }

    @Test func aLostNodesChannelsFollowAFailoverInTheMap() {
        let sink = FakeSink()
        let key = shard(low: true)
        var machine = subscribed(sink, [key])
        _ = machine.connectionLost(nodeA, RedisError(.connectionClosed, "killed"), now: now)
        #expect(sends(machine.topologyUpdated(map(nodeA, nodeB), now: now)).isEmpty)  // not failed over yet: waits for A
        let failedOver = machine.topologyUpdated(map(nodeC, nodeB), now: now)
        #expect(connects(failedOver) == [nodeC])
        #expect(disconnects(failedOver) == [nodeA])
        let sent = sends(machine.connectionReady(nodeC))
        #expect(machine.acknowledged(sent[0], now: now).contains { isRestored($0, sink) })
    }

    @Test func classicChannelsLiveOnOneNodeAndMoveWhenItIsLost() {
        var machine = Machine(topology: map(nodeA, nodeB))
        let sink = FakeSink()
        let channel = ChannelKey(kind: .channel, name: Array("news".utf8))
        let pattern = ChannelKey(kind: .pattern, name: Array("n*".utf8))
        let actions = machine.subscribe(sink, to: [channel, pattern], now: now)
        #expect(connects(actions) == [nodeA])  // one node for both
        for command in sends(machine.connectionReady(nodeA)) { _ = machine.acknowledged(command, now: now) }
        _ = machine.connectionLost(nodeA, RedisError(.connectionClosed, "gone"), now: now)
        let moved = machine.topologyUpdated(map(nodeA, nodeB), now: now)  // any node serves classic channels: B will do
        #expect(connects(moved) == [nodeB])
        var restored: [Action] = []
        for command in sends(machine.connectionReady(nodeB)) { restored += machine.acknowledged(command, now: now) }
        #expect(restored.contains { isRestored($0, sink) })
    }

    @Test func channelsOnANodeThatLeftTheClusterMoveAndTheNodeIsGivenUp() {
        let sink = FakeSink()
        let channel = ChannelKey(kind: .channel, name: Array("news".utf8))
        let high = shard(low: false)
        var machine = subscribed(sink, [channel, high])
        #expect(machine.node(of: channel) == nodeA && machine.node(of: high) == nodeB)
        // A gave its slots to C and was forgotten (`del-node`): it still runs, its connection is fine, and nothing
        // published in the cluster reaches it. No server push says so: only the map does.
        let actions = machine.topologyUpdated(map(nodeC, nodeB), now: now)
        #expect(actions.contains { isLost($0, sink) })
        #expect(sends(actions).map(\.node) == [nodeB])  // to the node already connected
        #expect(disconnects(actions) == [nodeA])
        #expect(machine.node(of: high) == nodeB)  // untouched
        var restored: [Action] = []
        for command in sends(actions) { restored += machine.acknowledged(command, now: now) }
        #expect(restored.contains { isRestored($0, sink) })
        #expect(sends(machine.topologyUpdated(map(nodeC, nodeB), now: now)).isEmpty)  // settled
    }

    func handoverOpened(_ actions: [Action]) -> [UInt64] {
        actions.compactMap { if case .openHandover(let id, _) = $0 { id } else { nil } }
    }
    func handoverSent(_ actions: [Action]) -> [(id: UInt64, keys: [ChannelKey], sequence: UInt64)] {
        actions.compactMap { if case .sendHandover(let id, let keys, let sequence) = $0 { (id, keys, sequence) } else { nil } }
    }
    func handoverClosed(_ actions: [Action]) -> [UInt64] {
        actions.compactMap { if case .closeHandover(let id) = $0 { id } else { nil } }
    }

    /// `machine` with `key` (on A) confirmed on C by a handover, before the flip; the handover's number.
    func handedOver(_ machine: inout Machine, _ key: ChannelKey) -> UInt64 {
        let slot = ClusterSlot.of(key.name)
        let id = handoverOpened(machine.migrationsObserved([slot: nodeC], on: nodeA))[0]
        let sent = handoverSent(machine.handoverReady(id))
        _ = machine.handoverAcknowledged(id, key: key, sequence: sent[0].sequence, now: now)
        return id
    }

    @Test func aWatchedMigrationIsSubscribedOnTheImportingNodeFirstAndCostsNoGap() {
        let sink = FakeSink()
        let key = shard(low: true)
        let slot = ClusterSlot.of(key.name)
        var machine = subscribed(sink, [key])
        #expect(machine.nodesToWatch == [nodeA])
        // A's watch: the slot is migrating to C. A handover connection to C is opened, and the channel asked for there.
        let opened = machine.migrationsObserved([slot: nodeC], on: nodeA)
        #expect(handoverOpened(opened).count == 1 && connects(opened).isEmpty)
        let id = handoverOpened(opened)[0]
        #expect(machine.migrationsObserved([slot: nodeC], on: nodeA).isEmpty)  // seen again: nothing new
        let sent = handoverSent(machine.handoverReady(id))
        #expect(sent.count == 1 && sent[0].keys == [key])
        #expect(machine.handoverAcknowledged(id, key: key, sequence: sent[0].sequence, now: now).isEmpty)
        // Before the flip, a message may come from either node: both deliver.
        #expect(machine.recipients(key, from: nodeA).count == 1)
        #expect(machine.recipients(key, fromHandover: id).count == 1)
        // The flip: A drops the channel. It lives on the handover now: no lost, no resubscribe, no new connection.
        let flipped = machine.serverUnsubscribed(key, on: nodeA, now: now)
        #expect(!flipped.contains { isLost($0, sink) })
        #expect(sends(flipped).isEmpty && connects(flipped).isEmpty)
        #expect(flipped.contains { if case .moved(let moved, nodeA, nodeC) = $0 { moved == key } else { false } })
        #expect(disconnects(flipped) == [nodeA])  // nothing left on A's own connection
        #expect(machine.node(of: key) == nodeC && machine.handover(of: key) == id)
        #expect(machine.recipients(key, from: nodeA).isEmpty && machine.recipients(key, fromHandover: id).count == 1)
        #expect(machine.nodesToWatch == [nodeC])  // watched where it lives now
        // It ends: unsubscribed on the handover's connection, which then closes.
        let left = machine.remove([key], from: sink, ends: true, now: now)
        #expect(sends(left).map(\.handover) == [id] && handoverClosed(left) == [id])
    }

    /// Two sharded channels in one slot (a common hash tag), the slot below 8192 (on A).
    func sameSlot() -> (ChannelKey, ChannelKey) {
        var tag = 0
        while true {
            let first = ChannelKey(kind: .shardChannel, name: Array("orders:{t\(tag)}:a".utf8))
            if ClusterSlot.of(first.name) < 8192 {
                return (first, ChannelKey(kind: .shardChannel, name: Array("orders:{t\(tag)}:b".utf8)))
            }
            tag += 1
        }
    }

    @Test func everyChannelOfAHandedOverSlotMovesWithoutAGap() {
        let sink = FakeSink()
        let (a, b) = sameSlot()
        let slot = ClusterSlot.of(a.name)
        var machine = subscribed(sink, [a, b])
        let id = handoverOpened(machine.migrationsObserved([slot: nodeC], on: nodeA))[0]
        let sent = handoverSent(machine.handoverReady(id))
        #expect(sent.count == 1 && Set(sent[0].keys) == [a, b])  // one SSUBSCRIBE for both
        for key in [a, b] { _ = machine.handoverAcknowledged(id, key: key, sequence: sent[0].sequence, now: now) }
        // The old owner drops them one push at a time: neither goes deaf, and the handover stays until both moved.
        let first = machine.serverUnsubscribed(a, on: nodeA, now: now)
        #expect(!first.contains { isLost($0, sink) } && handoverClosed(first).isEmpty)
        #expect(machine.recipients(b, fromHandover: id).count == 1)  // still delivered from either side
        let second = machine.serverUnsubscribed(b, on: nodeA, now: now)
        #expect(!second.contains { isLost($0, sink) } && sends(second).isEmpty)
        #expect(machine.handover(of: a) == id && machine.handover(of: b) == id)
        // One leaves: the handover stays for the other.
        #expect(handoverClosed(machine.remove([a], from: sink, now: now)).isEmpty)
        #expect(machine.recipients(b, fromHandover: id).count == 1)
    }

    @Test func aHandoverThatTheMapsContradictIsUndoneAfterSomeMaps() {
        let sink = FakeSink()
        let key = shard(low: true)
        var machine = subscribed(sink, [key])
        _ = handedOver(&machine, key)
        // A failed over instead of finishing the migration: its sunsubscribe looked like the flip, and the maps keep
        // saying B (A's promoted replica, say) serves the slot, not C.
        _ = machine.serverUnsubscribed(key, on: nodeA, now: now)
        // C is still a node of the cluster, serving nothing.
        let elsewhere = ClusterTopology(shards: [
            .init(primary: nodeB, replicas: [], slots: [0...16383]), .init(primary: nodeC, replicas: [], slots: []),
        ])
        var actions: [Action] = []
        for _ in 1..<Machine.handoverMapLimit {
            actions = machine.topologyUpdated(elsewhere, now: now)
            #expect(!actions.contains { isLost($0, sink) })
            let fetchesAgain = machine.needsTopology  // until it is clear
            #expect(fetchesAgain)
        }
        // Enough maps, but too soon (the node asked may learn the flip late): still waits.
        actions = machine.topologyUpdated(elsewhere, now: now + .seconds(1))
        #expect(!actions.contains { isLost($0, sink) })
        actions = machine.topologyUpdated(elsewhere, now: now + Machine.handoverMapGrace)
        #expect(actions.contains { isLost($0, sink) })
        #expect(connects(actions) == [nodeB] && machine.handover(of: key) == nil)
        // The handover's connection, which stays open for nothing now, is told to stop sending it... or closed.
        #expect(!handoverClosed(actions).isEmpty || sends(actions).contains { $0.handover != nil && !$0.subscribe })
    }

    @Test func aMigrationRedirectedToAnotherNodeGetsANewHandover() {
        let sink = FakeSink()
        let key = shard(low: true)
        let slot = ClusterSlot.of(key.name)
        var machine = subscribed(sink, [key])
        let first = handoverOpened(machine.migrationsObserved([slot: nodeC], on: nodeA))[0]
        let moved = machine.migrationsObserved([slot: nodeB], on: nodeA)
        #expect(handoverClosed(moved) == [first])
        #expect(moved.contains { if case .openHandover(_, nodeB) = $0 { true } else { false } })
    }

    @Test func aChannelThatLeavesItsOwnerTheOrdinaryWayReleasesItsPendingHandover() {
        let sink = FakeSink()
        let key = shard(low: true)
        let slot = ClusterSlot.of(key.name)
        var machine = subscribed(sink, [key])
        let id = handoverOpened(machine.migrationsObserved([slot: nodeC], on: nodeA))[0]
        // The slot flips before the handover's connection is even ready: the ordinary path takes the channel.
        _ = machine.topologyUpdated(ClusterTopology(shards: [
            .init(primary: nodeC, replicas: [], slots: [0...8191]), .init(primary: nodeB, replicas: [], slots: [8192...16383]),
            .init(primary: nodeA, replicas: [], slots: []),
        ]), now: now)
        let dropped = machine.serverUnsubscribed(key, on: nodeA, now: now)
        #expect(handoverClosed(dropped) == [id])
        #expect(machine.handoverReady(id).isEmpty)  // nothing sent on a handover that is gone
        // And a confirmed key dropped by the importing node before the flip is no longer counted on.
        var other = subscribed(sink, [key])
        let second = handedOver(&other, key)
        #expect(handoverClosed(other.handoverUnsubscribed(second, key: key)) == [second])
    }

    @Test func aRefusedHandoverIsNotRetriedDuringTheSameMigration() {
        let sink = FakeSink()
        let key = shard(low: true)
        let slot = ClusterSlot.of(key.name)
        var machine = subscribed(sink, [key])
        let id = handoverOpened(machine.migrationsObserved([slot: nodeC], on: nodeA))[0]
        _ = machine.handoverReady(id)
        _ = machine.handoverFailed(id, RedisError(.permissionDenied, "NOPERM"), refused: true, now: now)
        #expect(handoverOpened(machine.migrationsObserved([slot: nodeC], on: nodeA)).isEmpty)
        #expect(handoverOpened(machine.migrationsObserved([:], on: nodeA)).isEmpty)
        #expect(handoverOpened(machine.migrationsObserved([slot: nodeC], on: nodeA)).count == 1)  // a new migration
    }

    @Test func aChannelAlreadyWaitingForAHandoverIsNotAskedForAgain() {
        let sink = FakeSink()
        let (a, b) = sameSlot()
        let slot = ClusterSlot.of(a.name)
        var machine = subscribed(sink, [a, b])
        let id = handoverOpened(machine.migrationsObserved([slot: nodeC], on: nodeA))[0]
        let sent = handoverSent(machine.handoverReady(id))
        for key in [a, b] { _ = machine.handoverAcknowledged(id, key: key, sequence: sent[0].sequence, now: now) }
        _ = machine.serverUnsubscribed(a, on: nodeA, now: now)
        // A watch answer from before the flip, read after a's push: b still waits for the first handover.
        #expect(handoverOpened(machine.migrationsObserved([slot: nodeC], on: nodeA)).isEmpty)
        let second = machine.serverUnsubscribed(b, on: nodeA, now: now)
        #expect(!second.contains { isLost($0, sink) } && machine.handover(of: b) == id)
    }

    @Test func aChannelLivingOnAHandoverIsHandedOverAgainAtTheNextMigration() {
        let sink = FakeSink()
        let key = shard(low: true)
        let slot = ClusterSlot.of(key.name)
        var machine = subscribed(sink, [key])
        let first = handedOver(&machine, key)
        _ = machine.serverUnsubscribed(key, on: nodeA, now: now)
        // Now C migrates the slot back to A: a second handover, from C.
        let second = handoverOpened(machine.migrationsObserved([slot: nodeA], on: nodeC))
        #expect(second.count == 1 && second[0] != first)
        let sent = handoverSent(machine.handoverReady(second[0]))
        _ = machine.handoverAcknowledged(second[0], key: key, sequence: sent[0].sequence, now: now)
        let flipped = machine.serverUnsubscribed(key, on: nodeC, handover: first, now: now)
        #expect(!flipped.contains { isLost($0, sink) })
        #expect(handoverClosed(flipped) == [first])  // the first handover holds nothing any more
        #expect(machine.node(of: key) == nodeA && machine.handover(of: key) == second[0])
    }

    @Test func aFlipBeforeTheImportingNodeConfirmedIsAGapUntilItDoes() {
        let sink = FakeSink()
        let key = shard(low: true)
        let slot = ClusterSlot.of(key.name)
        var machine = subscribed(sink, [key])
        let id = handoverOpened(machine.migrationsObserved([slot: nodeC], on: nodeA))[0]
        let sent = handoverSent(machine.handoverReady(id))
        let flipped = machine.serverUnsubscribed(key, on: nodeA, now: now)
        #expect(flipped.contains { isLost($0, sink) } && sends(flipped).isEmpty)  // the SSUBSCRIBE is on its way
        let confirmed = machine.handoverAcknowledged(id, key: key, sequence: sent[0].sequence, now: now)
        #expect(confirmed.contains { isRestored($0, sink) })
    }

    @Test func anAbandonedMigrationClosesTheHandoverAndTheChannelStays() {
        let sink = FakeSink()
        let key = shard(low: true)
        var machine = subscribed(sink, [key])
        let id = handedOver(&machine, key)
        #expect(handoverClosed(machine.migrationsObserved([:], on: nodeA)).isEmpty)  // once: may cross the flip
        #expect(handoverClosed(machine.migrationsObserved([:], on: nodeA)) == [id])
        #expect(machine.node(of: key) == nodeA && machine.recipients(key, from: nodeA).count == 1)
        #expect(machine.recipients(key, fromHandover: id).isEmpty)
        // A later sunsubscribe from A takes the ordinary path (resubscribed where the map says).
        let dropped = machine.serverUnsubscribed(key, on: nodeA, now: now)
        #expect(dropped.contains { isLost($0, sink) })
    }

    @Test func aFailedHandoverSendsItsChannelsWhereTheMapSays() {
        let sink = FakeSink()
        let key = shard(low: true)
        var machine = subscribed(sink, [key])
        let id = handedOver(&machine, key)
        _ = machine.serverUnsubscribed(key, on: nodeA, now: now)
        // The handover's connection is lost after the flip: the channel goes deaf and is placed by the map (C now).
        _ = machine.topologyUpdated(map(nodeC, nodeB), now: now)
        let failed = machine.handoverFailed(id, RedisError(.connectionClosed, "gone"), now: now)
        #expect(failed.contains { isLost($0, sink) })
        #expect(connects(failed) == [nodeC] && handoverClosed(failed) == [id])
        #expect(machine.handover(of: key) == nil)
        let resent = sends(machine.connectionReady(nodeC))
        #expect(resent.map(\.node) == [nodeC] && resent.allSatisfy { $0.handover == nil })
    }

    @Test func theLastSubscriptionToLeaveUnsubscribesAndGivesTheNodeUp() {
        let first = FakeSink(), second = FakeSink()
        let key = shard(low: true)
        var machine = subscribed(first, [key])
        #expect(machine.subscribe(second, to: [key], now: now).contains { isReady($0, second) })  // confirmed already
        #expect(sends(machine.remove([key], from: first, ends: true, now: now)).isEmpty)
        let last = machine.remove([key], from: second, ends: true, now: now)
        #expect(sends(last).map { $0.subscribe } == [false])
        #expect(disconnects(last) == [nodeA])
        #expect(machine.subscriptionCount == 0)
    }

    @Test func anAdditionIsSettledOnceItsChannelsAreConfirmed() {
        let sink = FakeSink()
        let key = shard(low: true), added = shard(low: false)
        var machine = subscribed(sink, [key])
        let actions = machine.add([added], to: sink, request: 7, now: now)
        #expect(connects(actions) == [nodeB])
        let sent = sends(machine.connectionReady(nodeB))
        #expect(sent.map(\.key) == [added])
        #expect(!actions.contains { if case .additionFinished = $0 { true } else { false } })
        let done = machine.acknowledged(sent[0], now: now)
        #expect(done.contains { if case .additionFinished(7, .success) = $0 { true } else { false } })
    }

    @Test func aSubscriptionThatJoinedAConfirmedChannelWaitsForItAgainIfItIsLostBeforeTheRestIsConfirmed() {
        let first = FakeSink(), second = FakeSink()
        let shared = shard(low: true), other = shard(low: false)
        var machine = subscribed(first, [shared])
        let actions = machine.subscribe(second, to: [shared, other], now: now)  // `shared` confirmed already
        _ = machine.connectionLost(nodeA, RedisError(.connectionClosed, "gone"), now: now)
        var more: [Action] = []
        for node in connects(actions) { more += machine.connectionReady(node) }
        var outcome: [Action] = []
        for command in sends(more) { outcome += machine.acknowledged(command, now: now) }
        #expect(!outcome.contains { isReady($0, second) })  // not while `shared` is deaf
        let back = sends(machine.connectionReady(nodeA))
        #expect(machine.acknowledged(back[0], now: now).contains { isReady($0, second) })
    }

    @Test func aNodeThatRefusesTheSettingsForGoodEndsItsSubscriptionsInsteadOfRetrying() {
        let sink = FakeSink(), elsewhere = FakeSink()
        var machine = subscribed(sink, [shard(low: true)])
        var actions = machine.subscribe(elsewhere, to: [shard(low: false)], now: now)
        for node in connects(actions) { actions += machine.connectionReady(node) }
        for command in sends(actions) { _ = machine.acknowledged(command, now: now) }
        let refused = RedisError(.authenticationFailed, "WRONGPASS")
        let outcome = machine.connectionClosed(nodeA, refused, permanent: true, now: now)
        #expect(outcome.contains { if case .fail(let s, let error) = $0 { s === sink && error == refused } else { false } })
        #expect(!outcome.contains { if case .fail(let s, _) = $0 { s === elsewhere } else { false } })
        #expect(!outcome.contains(where: isRefresh) && connects(outcome).isEmpty)
        #expect(!machine.needsTopology)
    }

    @Test func closingUnsubscribesButKeepsDeliveringUntilTheAcknowledgements() {
        let sink = FakeSink()
        let key = shard(low: true)
        var machine = subscribed(sink, [key])
        let commands = sends(machine.unsubscribeAll())
        #expect(commands.map { $0.subscribe } == [false])
        #expect(machine.recipients(key, from: nodeA).count == 1)
    }

    @Test func aTransientErrorWaitsForTheClusterToSettle() {
        var machine = Machine(topology: map(nodeA, nodeB))
        let sink = FakeSink()
        let key = shard(low: true)
        _ = machine.subscribe(sink, to: [key], now: now)
        let sent = sends(machine.connectionReady(nodeA))
        let actions = machine.refused(sent[0], RedisError(.serverError, "CLUSTERDOWN The cluster is down"), now: now)
        #expect(actions.contains(where: isRefresh))
        #expect(!actions.contains { if case .fail = $0 { true } else { false } })
        #expect(machine.needsTopology)
        #expect(sends(machine.topologyUpdated(map(nodeA, nodeB), now: now)).map(\.node) == [nodeA])
    }
}

@Suite("Cluster slots and maps")
struct ClusterTopologyTests {
    @Test func slotsOfKnownNames() {
        #expect(ClusterSlot.crc16(Array("123456789".utf8)[...]) == 0x31C3)  // the XMODEM check value
        #expect(ClusterSlot.of(Array("foo".utf8)) == 12182)
        #expect(ClusterSlot.of(Array("{user1000}.following".utf8)) == ClusterSlot.of(Array("user1000".utf8)))
        #expect(ClusterSlot.of(Array("foo{}{bar}".utf8)) == ClusterSlot.of(Array("foo{}{bar}".utf8)[...]))
        #expect(ClusterSlot.hashTag(Array("foo{}{bar}".utf8)) == nil)  // an empty first tag: the whole name
        #expect(ClusterSlot.hashTag(Array("foo{{bar}}".utf8)) == 4..<8)  // "{bar"
    }

    @Test func parsesCLUSTERSHARDSWithTLSPortsAndSkipsUnknownEndpoints() throws {
        func node(_ port: Int, _ role: String, endpoint: String = "10.0.0.1", tlsPort: Int? = nil) -> RedisValue {
            var fields: [RedisValue] = [
                .bulkString(Array("id".utf8)), .bulkString(Array("x".utf8)), .bulkString(Array("port".utf8)), .integer(port),
                .bulkString(Array("ip".utf8)), .bulkString(Array("10.0.0.1".utf8)),
                .bulkString(Array("endpoint".utf8)), .bulkString(Array(endpoint.utf8)),
                .bulkString(Array("role".utf8)), .bulkString(Array(role.utf8)),
            ]
            if let tlsPort { fields += [.bulkString(Array("tls-port".utf8)), .integer(tlsPort)] }
            return .array(fields)
        }
        let reply = RedisValue.array([
            .array([
                .bulkString(Array("slots".utf8)), .array([.integer(0), .integer(100), .integer(200), .integer(16383)]),
                .bulkString(Array("nodes".utf8)),
                .array([node(7000, "master", tlsPort: 8000), node(7001, "replica", tlsPort: 8001), node(7002, "replica", endpoint: "?")]),
            ]),
            .array([
                .bulkString(Array("slots".utf8)), .array([.integer(101), .integer(199)]),
                .bulkString(Array("nodes".utf8)), .array([node(7003, "master")]),
            ]),
        ])
        let plain = try ClusterTopology.parse(shards: reply, tls: false)
        #expect(plain.coversEverySlot)
        #expect(plain.primary(ofSlot: 150)?.port == 7003)
        #expect(plain.primary(ofSlot: 16383)?.port == 7000)
        // 7002's endpoint is unknown ("?"), and its IP is used instead.
        #expect(plain.shards[0].replicas.map(\.port) == [7001, 7002])
        let tls = try ClusterTopology.parse(shards: reply, tls: true)
        #expect(tls.primary(ofSlot: 0)?.port == 8000)
        #expect(tls.primary(ofSlot: 150)?.port == 7003)  // no tls-port announced: the port
        #expect(throws: RedisError.self) { try ClusterTopology.parse(shards: .array([.integer(1)]), tls: false) }
    }

    @Test func redirectionsParseAndCorrectTheMap() throws {
        let moved = try #require(ClusterRedirection("MOVED 3999 127.0.0.1:6381"))
        #expect(!moved.ask && moved.slot == 3999 && moved.node == ClusterNodeAddress(host: "127.0.0.1", port: 6381))
        #expect(ClusterRedirection("ASK 1 [::1]:7000")?.node == ClusterNodeAddress(host: "::1", port: 7000))
        #expect(ClusterRedirection("ASK 1 ::1:7000")?.ask == true)
        #expect(ClusterRedirection("MOVED 99999 127.0.0.1:1") == nil)
        #expect(ClusterRedirection("ERR MOVED") == nil)
        var map = ClusterTopology(shards: [.init(primary: ClusterNodeAddress(host: "a", port: 1), replicas: [], slots: [0...16383])])
        map.redirect(slot: 5, to: ClusterNodeAddress(host: "b", port: 2))
        #expect(map.primary(ofSlot: 5)?.host == "b" && map.primary(ofSlot: 6)?.host == "a")
        #expect(map.primaries.map(\.host) == ["a", "b"])
    }
}

@Suite("Cluster command keys from the server's command table")
struct ClusterCommandKeysTests {
    /// A `COMMAND INFO` entry as Redis 7 writes it (categories, tips and key specs left empty).
    func entry(_ name: String, first: Int, last: Int, step: Int, flags: [String] = [], subcommands: [RedisValue] = []) -> RedisValue {
        .array([
            .bulkString(Array(name.utf8)), .integer(-2), .array(flags.map { .simpleString($0) }),
            .integer(first), .integer(last), .integer(step), .array([]), .array([]), .array([]), .array(subcommands),
        ])
    }

    func keys(_ entry: RedisValue, _ command: [RedisArgument]) -> [String]? {
        ClusterCommandKeys(info: entry)?.keys(in: command)?.map { String(decoding: $0.bytes, as: UTF8.self) }
    }

    @Test func positionsStepsAndCountingFromTheEnd() {
        #expect(keys(entry("get", first: 1, last: 1, step: 1), ["GET", "a"]) == ["a"])
        #expect(keys(entry("mset", first: 1, last: -1, step: 2), ["MSET", "a", "1", "b", "2"]) == ["a", "b"])
        #expect(keys(entry("del", first: 1, last: -1, step: 1), ["DEL", "a", "b", "c"]) == ["a", "b", "c"])
        // LMOVE src dst LEFT RIGHT: keys at 1 and 2 only.
        #expect(keys(entry("lmove", first: 1, last: 2, step: 1), ["LMOVE", "s", "d", "LEFT", "RIGHT"]) == ["s", "d"])
        // Too few arguments: whatever is there (the server refuses the arity).
        #expect(keys(entry("get", first: 1, last: 1, step: 1), ["GET"]) == [])
    }

    @Test func keylessMovableAndContainerCommands() {
        #expect(ClusterCommandKeys(info: entry("ping", first: 0, last: 0, step: 0)) == ClusterCommandKeys.none)
        #expect(keys(entry("ping", first: 0, last: 0, step: 0), ["PING"]) == [])
        #expect(ClusterCommandKeys(info: entry("eval", first: 0, last: 0, step: 0, flags: ["noscript", "movablekeys"])) == .movable)
        let sub = entry("xinfo|stream", first: 2, last: 2, step: 1)
        #expect(ClusterCommandKeys(info: entry("xinfo", first: 0, last: 0, step: 0, subcommands: [sub])) == .container)
        #expect(keys(sub, ["XINFO", "STREAM", "s"]) == ["s"])
        #expect(ClusterCommandKeys(info: .null) == nil)  // a command the server does not know
        let eval = ClusterCommandKeys.scripted["eval"]!
        #expect(eval.keys(in: ["EVAL", "return 1", "2", "k1", "k2", "arg"])?.map { String(decoding: $0.bytes, as: UTF8.self) } == ["k1", "k2"])
        #expect(eval.keys(in: ["EVAL", "return 1", "0", "arg"]) == [])
        #expect(eval.keys(in: ["EVAL", "return 1", "5", "k1"]) == [])  // the server refuses the count itself
    }
}

@Suite("Migrations read from CLUSTER NODES")
struct ClusterMigrationsTests {
    @Test func theNodesOwnLineGivesItsMigratingSlotsAndTheTargetsAddress() {
        let text = """
            07c37dfeb235213a872192d90877d0cd55635b91 127.0.0.1:30004@40004 slave e7d1eecce10fd6bb5eb35b9f99a514335d9ba9ca 0 1426238317239 4 connected
            67ed2db8d677e59ec4a4cefb06858cf2a1a89fa1 127.0.0.1:30002@40002,node2.example master - 0 1426238316232 2 connected 5461-10922 [5-<-e7d1eecce10fd6bb5eb35b9f99a514335d9ba9ca]
            e7d1eecce10fd6bb5eb35b9f99a514335d9ba9ca 127.0.0.1:30001@40001 myself,master - 0 0 1 connected 0-5460 [5->-67ed2db8d677e59ec4a4cefb06858cf2a1a89fa1] [77->-292f8b365bb7edb5e285caf0b7e6ddc7265d2f4f]
            292f8b365bb7edb5e285caf0b7e6ddc7265d2f4f 127.0.0.1:30003@40003 master - 0 1426238318243 3 connected 10923-16383
            """
        let migrating = ClusterMigrations.parse(clusterNodes: text)
        #expect(migrating == [
            5: ClusterNodeAddress(host: "127.0.0.1", port: 30002), 77: ClusterNodeAddress(host: "127.0.0.1", port: 30003),
        ])
        // Importing slots (`[slot-<-id]`) and other nodes' lines are not the node's migrations.
        #expect(ClusterMigrations.parse(clusterNodes: text.split(separator: "\n").filter { !$0.contains("myself") }.joined(separator: "\n")).isEmpty)
        #expect(ClusterMigrations.parse(clusterNodes: "").isEmpty)
        // A node announcing a host name that the map uses: the target is named as the map names it.
        let named = ClusterMigrations.parse(clusterNodes: text, known: [ClusterNodeAddress(host: "node2.example", port: 30002)])
        #expect(named[5] == ClusterNodeAddress(host: "node2.example", port: 30002))
    }
}
