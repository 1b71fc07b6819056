import DequeModule
import Testing
@testable import RedisPubSub

final class FakeSink {}

@Suite("PubSubStateMachine: reference-counted channels")
struct PubSubStateMachineTests {
    typealias Machine = PubSubStateMachine<FakeSink>
    let a = ChannelKey(kind: .channel, name: Array("a".utf8))
    let b = ChannelKey(kind: .channel, name: Array("b".utf8))
    let p = ChannelKey(kind: .pattern, name: Array("a*".utf8))

    @Test func firstSubscriptionSubscribesAndWaitsForTheAck() {
        var machine = Machine()
        let sink = FakeSink()
        let (commands, confirmed) = machine.add(sink, to: [a, b, a])  // duplicates collapse
        #expect(commands.map(\.key) == [a, b])
        #expect(commands.allSatisfy { $0.subscribe })
        #expect(!confirmed)
        #expect(machine.acknowledged(commands[0]).ready.isEmpty)  // still waiting for b
        #expect(machine.acknowledged(commands[1]).ready.map { $0 === sink } == [true])
    }

    @Test func secondSubscriptionToAConfirmedChannelSendsNothingAndIsLiveAtOnce() {
        var machine = Machine()
        let first = FakeSink(), second = FakeSink()
        let (commands, _) = machine.add(first, to: [a])
        _ = machine.acknowledged(commands[0])
        let (more, confirmed) = machine.add(second, to: [a])
        #expect(more.isEmpty)
        #expect(confirmed)
        #expect(machine.recipients(a).count == 2)
    }

    @Test func joiningWhileTheSubscribeIsInFlightWaitsForTheSameAck() {
        var machine = Machine()
        let first = FakeSink(), second = FakeSink()
        let (commands, _) = machine.add(first, to: [a])
        let (more, confirmed) = machine.add(second, to: [a])
        #expect(more.isEmpty && !confirmed)
        #expect(machine.recipients(a).isEmpty)  // nothing before the acknowledgement
        let ready = machine.acknowledged(commands[0]).ready
        #expect(ready.count == 2)
    }

    @Test func unsubscribeOnlyWhenTheLastSubscriptionLeaves() {
        var machine = Machine()
        let first = FakeSink(), second = FakeSink()
        let (commands, _) = machine.add(first, to: [a])
        _ = machine.acknowledged(commands[0])
        _ = machine.add(second, to: [a])
        #expect(machine.remove(first, from: [a]).isEmpty)
        #expect(machine.recipients(a).map { $0 === second } == [true])
        let unsubscribe = machine.remove(second, from: [a])
        #expect(unsubscribe.count == 1 && !unsubscribe[0].subscribe)
        #expect(machine.recipients(a).isEmpty)
        _ = machine.acknowledged(unsubscribe[0])
        #expect(machine.channels.isEmpty)
    }

    @Test func removingWhatWasNeverAddedDoesNothing() {
        var machine = Machine()
        #expect(machine.remove(FakeSink(), from: [a, p]).isEmpty)
        #expect(machine.channels.isEmpty)
    }

    @Test func rejoiningWhileTheUnsubscribeIsInFlightSubscribesAgainAndIgnoresTheStaleAck() {
        var machine = Machine()
        let first = FakeSink(), second = FakeSink()
        let (subscribe1, _) = machine.add(first, to: [a])
        _ = machine.acknowledged(subscribe1[0])
        let unsubscribe = machine.remove(first, from: [a])
        let (subscribe2, confirmed) = machine.add(second, to: [a])
        #expect(subscribe2.count == 1 && subscribe2[0].subscribe && !confirmed)
        // A message published before the server saw the new SUBSCRIBE is not the new subscription's.
        #expect(machine.recipients(a).isEmpty)
        // The server answers in order: the unsubscribe's ack, then the new subscribe's.
        #expect(machine.acknowledged(unsubscribe[0]).ready.isEmpty)
        #expect(machine.acknowledged(subscribe2[0]).ready.map { $0 === second } == [true])
        #expect(machine.recipients(a).map { $0 === second } == [true])
    }

    @Test func aLateAckOfASupersededSubscribeConfirmsNothing() {
        var machine = Machine()
        let first = FakeSink(), second = FakeSink()
        let (subscribe1, _) = machine.add(first, to: [a])
        _ = machine.remove(first, from: [a])  // UNSUBSCRIBE sent before SUBSCRIBE's ack
        let (subscribe2, _) = machine.add(second, to: [a])
        #expect(machine.acknowledged(subscribe1[0]).ready.isEmpty)  // the first SUBSCRIBE: superseded
        #expect(machine.acknowledged(subscribe2[0]).ready.map { $0 === second } == [true])
    }

    @Test func refusedSubscribeFailsEveryoneOnThatChannel() {
        var machine = Machine()
        let first = FakeSink(), second = FakeSink()
        let (commands, _) = machine.add(first, to: [a, b])
        _ = machine.add(second, to: [a])
        let failed = machine.refused(commands[0])
        #expect(failed.count == 2)
        #expect(machine.recipients(a).isEmpty)
        // The owner then removes the failed subscriptions elsewhere: b loses its only subscription.
        let commandsAfter = machine.remove(first, from: [a, b])
        #expect(commandsAfter.map(\.key) == [b])
    }

    @Test func unsolicitedUnsubscribeIsRecognised() {
        var machine = Machine()
        let sink = FakeSink()
        let (commands, _) = machine.add(sink, to: [a])
        _ = machine.acknowledged(commands[0])
        #expect(machine.isUnsolicitedUnsubscribe(a))
        #expect(!machine.isUnsolicitedUnsubscribe(b))
        #expect(machine.serverUnsubscribed(a).count == 1)
        #expect(machine.recipients(a).isEmpty)
        let unsubscribe = machine.remove(sink, from: [a])
        #expect(unsubscribe.isEmpty)  // the server already dropped it
    }

    @Test func channelsAndPatternsAreSeparateKeys() {
        var machine = Machine()
        let sink = FakeSink()
        let (commands, _) = machine.add(sink, to: [a, p])
        #expect(commands.map(\.key.kind) == [.channel, .pattern])
        #expect(machine.recipients(ChannelKey(kind: .pattern, name: Array("a".utf8))).isEmpty)
    }

    @Test func removeAllReturnsEachSubscriptionOnce() {
        var machine = Machine()
        let first = FakeSink(), second = FakeSink()
        _ = machine.add(first, to: [a, b])
        _ = machine.add(second, to: [b])
        #expect(machine.removeAll().count == 2)
        #expect(machine.channels.isEmpty && machine.sinkCount == 0)
    }
}

extension PubSubStateMachineTests {
    @Test func afterALostConnectionEveryChannelIsResubscribedAndReportedOnce() {
        var machine = Machine()
        let both = FakeSink(), pending = FakeSink(), patternOnly = FakeSink()
        let (commands, _) = machine.add(both, to: [a, b])
        for command in commands { _ = machine.acknowledged(command) }
        let (patternCommands, _) = machine.add(patternOnly, to: [p])
        _ = machine.acknowledged(patternCommands[0])
        _ = machine.add(pending, to: [ChannelKey(kind: .shardChannel, name: [1])])  // not yet acknowledged
        let dropped = machine.connectionLost()
        #expect(dropped.map { $0 === pending } == [true])  // its subscribe call fails; the others wait
        let again = machine.resubscribeAll()
        #expect(again.map(\.key) == [a, b, p])  // channels, then patterns, in a stable order
        #expect(again.allSatisfy { $0.subscribe })
        var resubscribed: [FakeSink] = []
        for command in again { resubscribed += machine.acknowledged(command).resubscribed }
        #expect(resubscribed.count == 2)  // `both` once (after a and b), `patternOnly` once
        #expect(resubscribed.contains { $0 === both } && resubscribed.contains { $0 === patternOnly })
    }

    @Test func acknowledgementsFromBeforeTheLossConfirmNothing() {
        var machine = Machine()
        let sink = FakeSink()
        let (old, _) = machine.add(sink, to: [a])
        _ = machine.acknowledged(old[0])
        _ = machine.connectionLost()
        let new = machine.resubscribeAll()
        let stale = machine.acknowledged(old[0])
        #expect(stale.ready.isEmpty && stale.resubscribed.isEmpty)
        #expect(machine.acknowledged(new[0]).resubscribed.count == 1)
    }

    @Test func unsubscribeAllKeepsRoutingUntilTheEnd() {
        var machine = Machine()
        let sink = FakeSink()
        let (commands, _) = machine.add(sink, to: [a, p])
        for command in commands { _ = machine.acknowledged(command) }
        let unsubscribes = machine.unsubscribeAll()
        #expect(unsubscribes.count == 2 && unsubscribes.allSatisfy { !$0.subscribe })
        #expect(machine.recipients(a).count == 1)  // messages before the acknowledgement still arrive
        #expect(machine.removeAll().count == 1)
    }
}

@Suite("SubscriptionSink: buffering policies")
struct SubscriptionSinkTests {
    func message(_ index: Int) -> Message { Message(channel: [99], payload: Array("\(index)".utf8)) }

    func drain(_ sink: SubscriptionSink) -> [String] {
        var batch = Deque<Message>()
        _ = sink.take(into: &batch)
        return batch.map(\.string)
    }

    @Test func bufferingNewestDropsTheOldest() {
        let sink = SubscriptionSink(keys: [], policy: .bufferingNewest(3))
        for index in 1...10 { _ = sink.append(message(index)) }
        #expect(drain(sink) == ["8", "9", "10"])
        #expect(sink.droppedCount == 7)
    }

    @Test func bufferingOldestDropsArrivals() {
        let sink = SubscriptionSink(keys: [], policy: .bufferingOldest(3))
        for index in 1...10 { _ = sink.append(message(index)) }
        #expect(drain(sink) == ["1", "2", "3"])
        #expect(sink.droppedCount == 7)
    }

    @Test func unboundedKeepsEverything() {
        let sink = SubscriptionSink(keys: [], policy: .unbounded)
        for index in 1...1000 { _ = sink.append(message(index)) }
        #expect(drain(sink).count == 1000)
        #expect(sink.droppedCount == 0)
    }

    @Test func finishedSinkHandsOutItsBufferThenTheEnd() {
        let sink = SubscriptionSink(keys: [], policy: .default)
        _ = sink.append(message(1))
        sink.finish(.failed(RedisError(.connectionClosed, "gone")))
        #expect(drain(sink) == ["1"])
        var batch = Deque<Message>()
        guard case .end(.failed(let error)) = sink.take(into: &batch) else { Issue.record("no end"); return }
        #expect(error.code == .connectionClosed)
        #expect(!sink.append(message(2)))
    }

    @Test func stoppedConsumerRefusesMessages() {
        let sink = SubscriptionSink(keys: [], policy: .default)
        _ = sink.append(message(1))
        sink.consumerStopped()
        _ = sink.append(message(2))
        var batch = Deque<Message>()
        guard case .end(.finished) = sink.take(into: &batch) else { Issue.record("expected the end"); return }
        #expect(batch.isEmpty)
    }
}

/// Reshaping a live subscription: additions are requests of their own, confirmed by their own acknowledgements;
/// removals take only what they name.
extension PubSubStateMachineTests {
    /// A live subscription `sink` on `a`, acknowledged.
    private func live(_ machine: inout Machine, _ sink: FakeSink, _ keys: [ChannelKey]) {
        let (commands, _) = machine.add(sink, to: keys)
        for command in commands { _ = machine.acknowledged(command) }
    }

    @Test func anAdditionSkipsHeldKeysAndIsReportedByItsOwnAcknowledgement() {
        var machine = Machine()
        let sink = FakeSink()
        live(&machine, sink, [a])
        let (commands, confirmed) = machine.add(sink, to: [a, b], request: 1)
        #expect(commands.map(\.key) == [b])  // `a` is held: no second SUBSCRIBE, no second registration
        #expect(!confirmed)
        #expect(machine.recipients(a).count == 1)
        #expect(machine.recipients(b).isEmpty)  // nothing on b before its acknowledgement
        let ack = machine.acknowledged(commands[0])
        #expect(ack.added == [1])
        #expect(ack.ready.isEmpty && ack.resubscribed.isEmpty)  // the subscription was live already
        #expect(machine.recipients(b).map { $0 === sink } == [true])
    }

    @Test func anAdditionOfChannelsOthersHoldIsConfirmedAtOnce() {
        var machine = Machine()
        let other = FakeSink(), sink = FakeSink()
        live(&machine, other, [b])
        live(&machine, sink, [a])
        let (commands, confirmed) = machine.add(sink, to: [b], request: 7)
        #expect(commands.isEmpty && confirmed)
        #expect(machine.recipients(b).count == 2)
    }

    @Test func removingSomeKeysUnsubscribesOnlyThoseNobodyElseHolds() {
        var machine = Machine()
        let other = FakeSink(), sink = FakeSink()
        live(&machine, other, [b])
        live(&machine, sink, [a, b])
        let (commands, resubscribed, settled) = machine.remove(sink, someOf: [a, b])
        #expect(commands.map(\.key) == [a] && commands.allSatisfy { !$0.subscribe })
        #expect(!resubscribed && settled.isEmpty)
        #expect(machine.recipients(a).isEmpty)  // at once, before the acknowledgement
        #expect(machine.recipients(b).map { $0 === other } == [true])
    }

    @Test func removingWhatAnAdditionWaitsForSettlesIt() {
        var machine = Machine()
        let sink = FakeSink()
        live(&machine, sink, [a])
        let (commands, _) = machine.add(sink, to: [b], request: 3)
        let removal = machine.remove(sink, someOf: [b])
        #expect(removal.settled == [3])
        #expect(removal.commands.map(\.key) == [b])  // the SUBSCRIBE went out: it is undone
        #expect(machine.acknowledged(commands[0]).added.isEmpty)  // superseded: confirms nothing
        #expect(machine.recipients(b).isEmpty)
    }

    @Test func aResubscriptionWaitingOnlyForRemovedKeysIsReportedByTheRemoval() {
        var machine = Machine()
        let sink = FakeSink()
        live(&machine, sink, [a, b])
        _ = machine.connectionLost()
        let again = machine.resubscribeAll()
        _ = machine.acknowledged(again[0])  // a confirmed; b still waited for
        let removal = machine.remove(sink, someOf: [b])
        #expect(removal.resubscribed)  // all it holds now is confirmed: the gap is over
    }

    @Test func additionsCutOffByALostConnectionAreHandedBackAndForgotten() {
        var machine = Machine()
        let sink = FakeSink()
        live(&machine, sink, [a])
        _ = machine.add(sink, to: [b], request: 5)
        #expect(machine.connectionLost().isEmpty)  // the live subscription stays, to be resubscribed
        let taken = machine.takeAdditions()
        #expect(taken.map(\.request) == [5])
        #expect(machine.takeAdditions().isEmpty)
        let removal = machine.remove(sink, someOf: [b])
        #expect(removal.commands.isEmpty)  // disconnected: nothing to unsubscribe
        #expect(machine.resubscribeAll().map(\.key) == [a])
    }

    @Test func endingASubscriptionForgetsItsAdditions() {
        var machine = Machine()
        let sink = FakeSink()
        live(&machine, sink, [a])
        let (commands, _) = machine.add(sink, to: [b], request: 9)
        #expect(Set(machine.remove(sink, from: [a, b]).map(\.key)) == [a, b])
        #expect(machine.acknowledged(commands[0]).added.isEmpty)
        #expect(machine.takeAdditions().isEmpty)
        #expect(machine.sinkCount == 0)
    }
}
