#if canImport(FoundationEssentials)
import FoundationEssentials
#else
import Foundation
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
        if let closedError {
            sink.ready.fail(closedError)
            sink.finish(.failed(closedError))
            return
        }
        if lostError != nil {
            park(sink)
            return
        }
        routeCache = nil
        let (commands, confirmed) = machine.add(sink, to: sink.keys)
        send(commands)
        if confirmed { sink.ready.succeed(()) }
    }

    func remove(_ sink: SubscriptionSink) {
        connection.loop.assertInLoop()
        if let index = parked.firstIndex(where: { $0.sink === sink }) {
            parked.remove(at: index).timer.cancel()
            return
        }
        routeCache = nil
        send(machine.remove(sink, from: sink.keys))
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
        routeCache = nil
        send(machine.unsubscribeAll())
        connection.close(completion)
    }

    private func send(_ commands: [PubSubStateMachine<SubscriptionSink>.Command]) {
        for command in commands {
            let verb = command.subscribe ? command.key.kind.subscribeCommand : command.key.kind.unsubscribeCommand
            let expects = command.subscribe
                ? nil : Acknowledgement(type: command.key.kind.acknowledgement(subscribe: false), name: command.key.name)
            connection.sendInternal([verb, RedisArgument(command.key.name)], expects: expects) { [self] result in
                acknowledgement(of: command, result)
            }
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
            let (ready, resubscribed) = machine.acknowledged(command)
            for sink in ready { sink.ready.succeed(()) }
            if !resubscribed.isEmpty {
                let date = Date()
                let gap = lostAt.map { ContinuousClock.now - $0 } ?? .zero
                for sink in resubscribed { sink.events.send(.resubscribed(at: date, gap: gap)) }
            }
        case .failure(let error) where error.code == .timeout:
            // The server may still act on the command later: only a new connection is certain of its state.
            connection.closeNow(error)
        case .failure(let error) where error.code == .connectionClosed:
            break  // the connection is gone: `connectionLost` or `connectionClosed` handles everything
        case .failure(let error):
            // An error reply (an ACL's NOPERM, say): the channel is not subscribed; its subscriptions fail.
            for sink in machine.refused(command) { fail(sink, error) }
        }
    }

    private func fail(_ sink: SubscriptionSink, _ error: RedisError) {
        routeCache = nil
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
        guard case .array(let elements) = reply, let first = elements.first, case .bulkString(let type) = first else {
            return false
        }
        let kind: SubscriptionKind
        switch type {
        case Array("message".utf8): kind = .channel
        case Array("pmessage".utf8): kind = .pattern
        case Array("smessage".utf8): kind = .shardChannel
        default: return handleUnsolicitedUnsubscribe(type, elements, awaited: awaited)
        }
        let names = elements.dropFirst().dropLast()
        guard elements.count == (kind == .pattern ? 4 : 3),
              let routeName = names.first?.bulkBytes, let channel = names.last?.bulkBytes
        else {
            let count = discardedPushes.add(1, ordering: .relaxed).newValue
            connection.logger.debug(
                "dropped a malformed message push", metadata: ["redis.push": "\(reply.shape)", "redis.dropped": "\(count)"])
            return true
        }
        let payload = elements[elements.count - 1]
        let message: Message
        if case .bulkString(let bytes) = payload {
            message = Message(
                channel: channel, pattern: kind == .pattern ? routeName : nil, isSharded: kind == .shardChannel, payload: bytes)
        } else {
            message = Message(
                channel: channel, pattern: kind == .pattern ? routeName : nil, isSharded: kind == .shardChannel,
                payloadValue: payload)
        }
        for sink in machine.recipients(ChannelKey(kind: kind, name: routeName)) where sink.append(message) {
            toWake.append(sink)
        }
        return true
    }

    func handleMessage(_ push: RawPush) {
        let route = push.pattern ?? push.channel
        let name: [UInt8]
        let sinks: [SubscriptionSink]
        if let cache = routeCache, cache.kind == push.kind, cache.name.elementsEqual(route) {
            name = cache.name
            sinks = cache.sinks
        } else {
            name = Array(route)
            sinks = machine.recipients(ChannelKey(kind: push.kind, name: name))
            routeCache = (push.kind, name, sinks)
        }
        guard !sinks.isEmpty else { return }
        let message: Message
        switch push.kind {
        case .channel: message = Message(channel: name, payload: Array(push.payload))
        case .shardChannel: message = Message(channel: name, isSharded: true, payload: Array(push.payload))
        case .pattern: message = Message(channel: Array(push.channel), pattern: name, payload: Array(push.payload))
        }
        for sink in sinks where sink.append(message) {
            toWake.append(sink)
        }
    }

    private func handleUnsolicitedUnsubscribe(_ type: [UInt8], _ elements: [RedisValue], awaited: Acknowledgement?) -> Bool {
        guard elements.count == 3, case .bulkString(let name) = elements[1] else { return false }
        if awaited == Acknowledgement(type: type, name: name) { return false }  // the reply to our own UNSUBSCRIBE
        let kinds: [SubscriptionKind] = [.channel, .pattern, .shardChannel]
        guard let kind = kinds.first(where: { $0.acknowledgement(subscribe: false) == type }) else { return false }
        let key = ChannelKey(kind: kind, name: name)
        guard machine.isUnsolicitedUnsubscribe(key) else { return false }
        routeCache = nil
        let error = RedisError(.connectionClosed, "the server ended the subscription to '\(String(decoding: name, as: UTF8.self))'")
        for sink in machine.serverUnsubscribed(key) { fail(sink, error) }
        return true
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
        // others are resubscribed then.
        for sink in machine.connectionLost() { park(sink) }
        var notified = Set<ObjectIdentifier>()
        for key in machine.channels.keys {
            for sink in machine.recipients(key) where notified.insert(ObjectIdentifier(sink)).inserted {
                sink.events.send(.disconnected(at: date, cause: error))
            }
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
    }

    func connectionClosed(_ error: RedisError?) {
        flush()
        routeCache = nil
        closedError = error ?? RedisError(.connectionClosed, "the subscriber was closed by close()")
        let waiting = parked
        parked = []
        for (sink, timer) in waiting {
            timer.cancel()
            sink.ready.fail(closedError!)
            sink.finish(.failed(closedError!))
        }
        for sink in machine.removeAll() {
            sink.ready.fail(closedError!)
            sink.finish(error.map { .failed($0) } ?? .finished)
        }
    }
}
