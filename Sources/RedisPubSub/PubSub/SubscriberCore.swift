#if canImport(FoundationEssentials)
import FoundationEssentials
#else
import Foundation
#endif
#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#elseif canImport(Darwin)
import Darwin
#endif
import Logging
import Synchronization

/// The event-loop side of a ``Subscriber``: registers subscriptions in the ``PubSubStateMachine``, sends what it
/// asks for, routes pushes to subscriptions, resubscribes after a reconnect, and ends subscriptions when the
/// connection closes for good. Loop-confined.
final class SubscriberCore: PushHandler, @unchecked Sendable {
    // @unchecked Sendable because: every mutable property is touched only on `connection.loop` (asserted); other
    // threads only call `execute`, which hops there.

    let connection: ConnectionCore
    private var machine = PubSubStateMachine<SubscriptionSink>()
    private var toWake: [SubscriptionSink] = []
    /// Why the connection is down right now (reconnecting), if it is.
    private var lostError: RedisError?
    private var closedError: RedisError?
    /// Subscriptions waiting for the connection to come back (see ``park(_:)``), in the order they were made.
    private var parked: [(sink: SubscriptionSink, timer: LoopTimer)] = []
    /// Channels being added to live subscriptions (``addKeys(_:to:_:)``), by request number; `timer` is set while
    /// one waits for a reconnect.
    private var additions: [UInt64: Addition] = [:]
    private var nextAddition: UInt64 = 0
    private struct Addition {
        let sink: SubscriptionSink
        /// Every key the caller asked for: it waits for all of them to be confirmed.
        var keys: [ChannelKey]
        /// The keys this addition put on the subscription: taken out again if it fails or its caller left.
        var introduced: [ChannelKey]
        let pending: Pending<Void>
        var timer: LoopTimer?
    }
    /// Subscriptions told `disconnected` and not yet `resubscribed`.
    private var owesResubscribed = Set<ObjectIdentifier>()
    /// Every subscription that became live and has not ended, whether or not a channel holds it right now (one that
    /// removed all its names, or holds only names being added, is on no channel).
    private var live: [ObjectIdentifier: SubscriptionSink] = [:]
    /// `close()` began: nothing new is subscribed.
    private var closing = false
    /// The last routed channel (or pattern): its interned name and recipients, so a burst on one channel costs no
    /// hashing and no channel-name allocation. Cleared whenever the registry changes.
    private var routeCache: (kind: SubscriptionKind, name: [UInt8], sinks: [SubscriptionSink])?
    /// Message-shaped pushes too malformed to route (a channel that is not a string, a wrong element count): dropped
    /// and counted, never a reason to reset the connection.
    let discardedPushes = Atomic(0)

    init(connection: ConnectionCore) {
        self.connection = connection
    }

    /// Runs `body` on the loop with this core.
    func execute(_ body: @escaping @Sendable (SubscriberCore) -> Void) {
        connection.loop.execute { body(self) }
    }

    // MARK: Subscriptions (loop)

    func add(_ sink: SubscriptionSink) {
        connection.loop.assertInLoop()
        if let error = closedError ?? (closing ? Self.closingError : nil) {
            sink.ready.fail(error)
            sink.finish(.failed(error))
            return
        }
        if lostError != nil {
            park(sink)
            return
        }
        routeCache = nil
        let (commands, confirmed) = machine.add(sink, to: sink.keys)
        send(commands)
        if confirmed { ready(sink) }
    }

    /// The subscription ends: unsubscribes what nobody else needs, then calls `completion` once the server
    /// acknowledged it (or at once when nothing was sent, or the connection is gone).
    func remove(_ sink: SubscriptionSink, completion: (@Sendable () -> Void)? = nil) {
        connection.loop.assertInLoop()
        settleAdditions(of: sink, RedisError(.invalidArgument, "the subscription ended before the server confirmed"))
        owesResubscribed.remove(ObjectIdentifier(sink))  // an identifier may be reused by a later subscription
        live[ObjectIdentifier(sink)] = nil
        if let index = parked.firstIndex(where: { $0.sink === sink }) {
            parked.remove(at: index).timer.cancel()
            completion?()
            return
        }
        routeCache = nil
        send(machine.remove(sink, from: sink.keys), completion: completion)
    }

    /// A subscription is live: its `subscribe` call returns, and its events start with `subscribed`.
    private func ready(_ sink: SubscriptionSink) {
        live[ObjectIdentifier(sink)] = sink
        sink.setSubscribed(true)
        sink.events.send(.subscribed(at: Date()))
        sink.ready.succeed(())
    }

    // MARK: Reshaping a live subscription (loop)

    static let closingError = RedisError(.connectionClosed, "the subscriber is closing: close() was called")

    /// Adds `keys` to a live subscription; `pending` succeeds once the server confirmed every one of them.
    func addKeys(_ keys: [ChannelKey], to sink: SubscriptionSink, _ pending: Pending<Void>) {
        connection.loop.assertInLoop()
        if let error = closedError ?? (closing ? Self.closingError : nil) { return pending.fail(error) }
        guard !sink.hasEnded else {
            return pending.fail(RedisError(.invalidArgument, "the subscription has ended: subscribe again"))
        }
        var unique = Set<ChannelKey>()
        let keys = keys.filter { unique.insert($0).inserted }
        let introduced = sink.insertKeys(keys)
        nextAddition += 1
        additions[nextAddition] = Addition(sink: sink, keys: keys, introduced: introduced, pending: pending)
        if lostError != nil {
            sink.setSubscribed(false)
            parkAddition(nextAddition)
        } else {
            apply(nextAddition)
        }
    }

    /// Sends an addition's SUBSCRIBEs (those the connection is not subscribed to already).
    private func apply(_ request: UInt64) {
        guard let addition = additions[request] else { return }
        if addition.pending.isFinished { return finish(request, .failure(.cancelled)) }  // its caller left
        routeCache = nil
        let (commands, confirmed) = machine.add(addition.sink, to: addition.keys, request: request)
        send(commands)
        if confirmed {
            finish(request, .success(()))
        } else {
            addition.sink.setSubscribed(false)
        }
    }

    /// An addition made (or cut off) while the connection is down waits for the reconnect, up to the connect timeout,
    /// as a new subscription does; then it fails and its channels are taken out again.
    private func parkAddition(_ request: UInt64) {
        let limit = connection.configuration.connectTimeout
        additions[request]?.timer = connection.loop.scheduleTimer(at: .now + limit) { [self] in
            let cause = lostError.map { ": \($0.message)" } ?? ""
            finish(request, .failure(RedisError(.connectionClosed, "not connected: still reconnecting after \(limit)\(cause)")))
        }
    }

    /// Settles an addition: on success its caller returns (unless it left: then it is undone); on failure what it
    /// introduced is taken out, and its caller learns of it once the server acknowledged that.
    private func finish(_ request: UInt64, _ outcome: Result<Void, RedisError>) {
        guard let addition = additions.removeValue(forKey: request) else { return }
        addition.timer?.cancel()
        machine.forgetAddition(request)
        let sink = addition.sink
        if case .success = outcome, !addition.pending.isFinished {
            updateSubscribed(sink)  // first: the caller may look at `isSubscribed` as soon as it resumes
            if addition.pending.succeed(()) { return }  // else its caller was cancelled meanwhile: undo it after all
        }
        let failure: RedisError
        if case .failure(let error) = outcome { failure = error } else { failure = .cancelled }
        // Names another addition of this subscription still asks for stay, and become that addition's to undo.
        var introduced = addition.introduced
        for key in addition.introduced {
            guard let other = additions.filter({ $0.value.sink === sink && $0.value.keys.contains(key) }).keys.min()
            else { continue }
            additions[other]?.introduced.append(key)
            introduced.removeAll { $0 == key }
        }
        let held = sink.removeKeys(introduced)
        let pending = addition.pending
        guard !held.isEmpty else {
            pending.fail(failure)
            return updateSubscribed(sink)
        }
        routeCache = nil
        let (commands, resubscribed, settled) = machine.remove(sink, someOf: held)
        if resubscribed { reportResubscribed([sink]) }
        send(commands) { pending.fail(failure) }
        for other in settled { finish(other, .success(())) }
        updateSubscribed(sink)
    }

    /// Whether `sink` waits for nothing: no addition and no resubscription under way.
    private func isSettled(_ sink: SubscriptionSink) -> Bool {
        lostError == nil && !machine.isWaiting(sink) && !additions.values.contains { $0.sink === sink }
    }

    /// After an addition or a removal: a subscription that waits for nothing more is subscribed, and one that owed
    /// its `resubscribed` event (its gap ended through additions, not a resubscription) gets it now.
    private func updateSubscribed(_ sink: SubscriptionSink) {
        guard isSettled(sink) else { return }
        if owesResubscribed.contains(ObjectIdentifier(sink)) {
            reportResubscribed([sink])
        } else if !sink.hasEnded {
            sink.setSubscribed(true)
        }
    }

    /// Fails every addition of `sink` (it ended, or the connection closed for good), without undoing anything.
    private func settleAdditions(of sink: SubscriptionSink?, _ error: RedisError) {
        for (request, addition) in additions where sink == nil || addition.sink === sink {
            additions[request] = nil
            addition.timer?.cancel()
            machine.forgetAddition(request)
            addition.pending.fail(error)
        }
    }

    /// Removes `keys` from a live subscription: nothing more is routed to it from them; `completion` runs once the
    /// server acknowledged the UNSUBSCRIBEs that nobody else's need kept from being sent (at once when there are none).
    func removeKeys(_ keys: [ChannelKey], from sink: SubscriptionSink, completion: @escaping @Sendable () -> Void) {
        connection.loop.assertInLoop()
        let held = sink.removeKeys(keys)
        guard !held.isEmpty, closedError == nil else { return completion() }
        routeCache = nil
        let removed = Set(held)
        // Additions (parked or in flight) stop waiting for these keys, and no longer own them.
        var emptied: [UInt64] = []
        for (request, var addition) in additions where addition.sink === sink {
            addition.keys.removeAll { removed.contains($0) }
            addition.introduced.removeAll { removed.contains($0) }
            additions[request] = addition
            if addition.keys.isEmpty { emptied.append(request) }
        }
        if parked.contains(where: { $0.sink === sink }) {  // not registered yet: its keys are all there is
            for request in emptied { finish(request, .success(())) }
            return completion()
        }
        let (commands, resubscribed, settled) = machine.remove(sink, someOf: held)
        if resubscribed { reportResubscribed([sink]) }
        for request in Set(emptied + settled).sorted() { finish(request, .success(())) }
        updateSubscribed(sink)
        send(commands, completion: completion)  // last: with nothing to send, `completion` runs at once
    }

    /// `PING` on the subscriber connection (answered in order with everything else on it).
    func ping(_ pending: Pending<Void>) {
        connection.loop.assertInLoop()
        connection.sendInternal(["PING"]) { result in
            switch result {
            case .success: pending.succeed(())
            case .failure(let error): pending.fail(error)
            }
        }
    }

    /// Subscriptions registered right now (for tests and introspection), counting those waiting for a reconnect.
    var subscriptionCount: Int { machine.sinkCount + parked.count }

    /// A subscription made (or not yet confirmed) while the connection is down waits for the reconnect, up to the
    /// connect timeout; then its `subscribe` call fails.
    private func park(_ sink: SubscriptionSink) {
        let limit = connection.configuration.connectTimeout
        let timer = connection.loop.scheduleTimer(at: .now + limit) { [self] in
            guard let index = parked.firstIndex(where: { $0.sink === sink }) else { return }
            parked.remove(at: index)
            let cause = lostError.map { ": \($0.message)" } ?? ""
            let error = RedisError(.connectionClosed, "not connected: still reconnecting after \(limit)\(cause)")
            sink.ready.fail(error)
            sink.finish(.failed(error))
        }
        parked.append((sink, timer))
    }

    /// `close()`: unsubscribe everything, let the acknowledgements (and the messages before them) arrive, close.
    func close(_ completion: @escaping @Sendable () -> Void) {
        connection.loop.assertInLoop()
        closing = true
        routeCache = nil
        send(machine.unsubscribeAll())
        connection.close(completion)
    }

    /// Sends `commands`; `completion` runs once every one of them is answered or failed (at once when there are none).
    private func send(
        _ commands: [PubSubStateMachine<SubscriptionSink>.Command],
        completion: (@Sendable () -> Void)? = nil
    ) {
        var outstanding = commands.count
        if outstanding == 0 { completion?() }
        for command in commands {
            let verb = command.subscribe ? command.key.kind.subscribeCommand : command.key.kind.unsubscribeCommand
            let expects = command.subscribe
                ? nil : Acknowledgement(type: command.key.kind.acknowledgement(subscribe: false), name: command.key.name)
            connection.sendInternal([verb, RedisArgument(command.key.name)], expects: expects) { [self] result in
                acknowledgement(of: command, result)
                outstanding -= 1
                if outstanding == 0 { completion?() }
            }
        }
    }

    private func reportResubscribed(_ sinks: [SubscriptionSink]) {
        guard !sinks.isEmpty else { return }
        let date = Date()
        let gap = lostAt.map { ContinuousClock.now - $0 } ?? .zero
        for sink in sinks where owesResubscribed.remove(ObjectIdentifier(sink)) != nil {
            sink.setSubscribed(!additions.values.contains { $0.sink === sink })
            sink.events.send(.resubscribed(at: date, gap: gap))
        }
    }

    private func acknowledgement(
        of command: PubSubStateMachine<SubscriptionSink>.Command,
        _ result: Result<RedisValue, RedisError>
    ) {
        routeCache = nil
        switch result {
        case .success(let reply):
            guard case .array(let elements) = reply, elements.count == 3,
                  elements[0].bytes == command.key.kind.acknowledgement(subscribe: command.subscribe),
                  elements[1].bytes == command.key.name
            else {
                connection.closeNow(RedisError(.protocolError, "unexpected acknowledgement: \(reply.shape)"))
                return
            }
            let (ready, resubscribed, added) = machine.acknowledged(command)
            for sink in ready { self.ready(sink) }
            reportResubscribed(resubscribed)
            for request in added { finish(request, .success(())) }
        case .failure(let error) where error.code == .timeout:
            // The server may still act on the command later: only a new connection is certain of its state.
            connection.closeNow(error)
        case .failure(let error) where error.code == .connectionClosed:
            break  // the connection is gone: `connectionLost` or `connectionClosed` handles everything
        case .failure(let error):
            // An error reply (an ACL's NOPERM, say): the channel is not subscribed. Additions waiting for it fail
            // and are undone (their subscription keeps what it had); a subscription that held it otherwise fails.
            for sink in machine.refused(command) {
                let waiting = additions.filter { $0.value.sink === sink && $0.value.keys.contains(command.key) }
                for request in waiting.keys.sorted() { finish(request, .failure(error)) }
                if sink.keys.contains(command.key) { fail(sink, error) }
            }
        }
    }

    private func fail(_ sink: SubscriptionSink, _ error: RedisError) {
        routeCache = nil
        settleAdditions(of: sink, error)
        owesResubscribed.remove(ObjectIdentifier(sink))
        live[ObjectIdentifier(sink)] = nil
        sink.ready.fail(error)
        sink.finish(.failed(error))
        send(machine.remove(sink, from: sink.keys))
    }

    // MARK: PushHandler

    /// Messages with a string payload never get here (the context recognises them in the raw reply:
    /// ``handleMessage(_:)``). What does: messages whose payload is something else (the key list of a client-side
    /// caching invalidation on `__redis__:invalidate`), malformed messages (dropped and counted), and unsubscribes the
    /// server decided on by itself. A push is never taken for a request's reply.
    func handlePush(_ reply: RedisValue, awaited: Acknowledgement?) -> Bool {
        switch PubSubPush(reply, awaited: awaited) {
        case nil:
            return false
        case .malformed:
            let count = discardedPushes.add(1, ordering: .relaxed).newValue
            connection.logger.debug(
                "dropped a malformed message push", metadata: ["redis.push": "\(reply.shape)", "redis.dropped": "\(count)"])
            return true
        case .message(let route, let message):
            for sink in machine.recipients(route) where sink.append(message) {
                toWake.append(sink)
            }
            return true
        case .unsubscribed(let key):
            guard machine.isUnsolicitedUnsubscribe(key) else { return false }
            routeCache = nil
            let name = String(decoding: key.name, as: UTF8.self)
            let error = RedisError(.connectionClosed, "the server ended the subscription to '\(name)'")
            for sink in machine.serverUnsubscribed(key) { fail(sink, error) }
            return true
        }
    }

    func handleMessage(_ push: RawPush) {
        let route = push.pattern ?? push.channel
        let name: [UInt8]
        let sinks: [SubscriptionSink]
        if let cache = routeCache, cache.kind == push.kind, cache.name.sameBytes(as: route) {
            name = cache.name
            sinks = cache.sinks
        } else {
            name = Array(route)
            sinks = machine.recipients(ChannelKey(kind: push.kind, name: name))
            routeCache = (push.kind, name, sinks)
        }
        guard !sinks.isEmpty else { return }
        let message = Message(push, route: name)
        for sink in sinks where sink.append(message) {
            toWake.append(sink)
        }
    }

    func flush() {
        for sink in toWake { sink.wake() }
        toWake.removeAll(keepingCapacity: true)
    }

    private var lostAt: ContinuousClock.Instant?

    func connectionLost(_ error: RedisError, at date: Date) {
        flush()
        routeCache = nil
        lostError = error
        lostAt = .now
        // Subscriptions not yet confirmed start again after the reconnect (their `subscribe` call still waits); the
        // others are resubscribed then, and each is told it is deaf (also one that held only names being added).
        // Additions not yet confirmed wait for the reconnect and are made again then.
        for sink in machine.connectionLost() { park(sink) }
        for (request, _) in machine.takeAdditions() { parkAddition(request) }
        for sink in live.values {
            owesResubscribed.insert(ObjectIdentifier(sink))
            sink.setSubscribed(false)
            sink.events.send(.disconnected(at: date, cause: error))
        }
    }

    func connectionRestored(at date: Date, downtime: Duration) {
        lostError = nil
        routeCache = nil
        send(machine.resubscribeAll())
        let waiting = parked
        parked = []
        for (sink, timer) in waiting {
            timer.cancel()
            add(sink)
        }
        for (request, addition) in additions.sorted(by: { $0.key < $1.key }) where addition.timer != nil {
            addition.timer?.cancel()
            additions[request]?.timer = nil
            apply(request)
        }
        // A subscription holding no name that needs resubscribing (it removed them all meanwhile) is back now.
        for sink in live.values where owesResubscribed.contains(ObjectIdentifier(sink)) { updateSubscribed(sink) }
    }

    func connectionClosed(_ error: RedisError?) {
        flush()
        routeCache = nil
        closedError = error ?? RedisError(.connectionClosed, "the subscriber was closed by close()")
        settleAdditions(of: nil, closedError!)
        owesResubscribed = []
        let waiting = parked
        parked = []
        for (sink, timer) in waiting {
            timer.cancel()
            sink.ready.fail(closedError!)
            sink.finish(.failed(closedError!))
        }
        var ended = live
        live = [:]
        for sink in machine.removeAll() { ended[ObjectIdentifier(sink)] = sink }
        for sink in ended.values {
            sink.ready.fail(closedError!)
            sink.finish(error.map { .failed($0) } ?? .finished)
        }
    }
}
