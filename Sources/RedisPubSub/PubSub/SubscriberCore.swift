/// The event-loop side of a ``Subscriber``: registers subscriptions in the ``PubSubStateMachine``, sends what it
/// asks for, routes pushes to subscriptions and ends them when the connection goes. Loop-confined.
final class SubscriberCore: PushHandler, @unchecked Sendable {
    // @unchecked Sendable because: every mutable property is touched only on `connection.loop` (asserted); other
    // threads only call `execute`, which hops there.

    let connection: ConnectionCore
    private var machine = PubSubStateMachine<SubscriptionSink>()
    private var toWake: [SubscriptionSink] = []
    private var closedError: RedisError?
    /// `close()` was called: subscriptions end normally instead of with the connection's error.
    private var closing = false

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
        let (commands, confirmed) = machine.add(sink, to: sink.keys)
        send(commands)
        if confirmed { sink.ready.succeed(()) }
    }

    func remove(_ sink: SubscriptionSink) {
        connection.loop.assertInLoop()
        send(machine.remove(sink, from: sink.keys))
    }

    /// Subscriptions registered right now (for tests and introspection).
    var subscriptionCount: Int { machine.sinkCount }

    func markClosing() {
        connection.loop.assertInLoop()
        closing = true
    }

    private func send(_ commands: [PubSubStateMachine<SubscriptionSink>.Command]) {
        for command in commands {
            let verb = command.subscribe ? command.key.kind.subscribeCommand : command.key.kind.unsubscribeCommand
            connection.sendInternal([verb, RedisArgument(command.key.name)]) { [self] result in
                acknowledgement(of: command, result)
            }
        }
    }

    private func acknowledgement(
        of command: PubSubStateMachine<SubscriptionSink>.Command,
        _ result: Result<RedisValue, RedisError>
    ) {
        switch result {
        case .success(let reply):
            guard case .array(let elements) = reply, elements.count == 3,
                  elements[0].bytes == command.key.kind.acknowledgement(subscribe: command.subscribe),
                  elements[1].bytes == command.key.name
            else {
                connection.closeNow(RedisError(.protocolError, "unexpected acknowledgement: \(reply)"))
                return
            }
            for sink in machine.acknowledged(command) { sink.ready.succeed(()) }
        case .failure(let error) where error.code == .timeout:
            // The server may still act on the command later: only a new connection is certain of its state.
            connection.closeNow(error)
        case .failure(let error) where error.code == .connectionClosed:
            break  // `connectionClosed(_:)` ends everything
        case .failure(let error):
            // An error reply (an ACL's NOPERM, say): the channel is not subscribed; its subscriptions fail.
            for sink in machine.refused(command) { fail(sink, error) }
        }
    }

    private func fail(_ sink: SubscriptionSink, _ error: RedisError) {
        sink.ready.fail(error)
        sink.finish(.failed(error))
        send(machine.remove(sink, from: sink.keys))
    }

    // MARK: PushHandler

    private static let message = Array("message".utf8)
    private static let pmessage = Array("pmessage".utf8)
    private static let smessage = Array("smessage".utf8)

    func handlePush(_ reply: RedisValue) -> Bool {
        guard case .array(let elements) = reply, elements.count >= 3, case .bulkString(let type) = elements[0] else {
            return false
        }
        switch (type, elements.count) {
        case (Self.message, 3):
            guard case .bulkString(let channel) = elements[1], case .bulkString(let payload) = elements[2] else { return false }
            route(ChannelKey(kind: .channel, name: channel), Message(channel: channel, payload: payload))
        case (Self.smessage, 3):
            guard case .bulkString(let channel) = elements[1], case .bulkString(let payload) = elements[2] else { return false }
            route(ChannelKey(kind: .shardChannel, name: channel), Message(channel: channel, isSharded: true, payload: payload))
        case (Self.pmessage, 4):
            guard case .bulkString(let pattern) = elements[1], case .bulkString(let channel) = elements[2],
                  case .bulkString(let payload) = elements[3]
            else { return false }
            route(ChannelKey(kind: .pattern, name: pattern), Message(channel: channel, pattern: pattern, payload: payload))
        default:
            return handleUnsolicitedUnsubscribe(type, elements)
        }
        return true
    }

    private func route(_ key: ChannelKey, _ message: Message) {
        for sink in machine.recipients(key) where sink.append(message) {
            toWake.append(sink)
        }
    }

    private func handleUnsolicitedUnsubscribe(_ type: [UInt8], _ elements: [RedisValue]) -> Bool {
        guard elements.count == 3, case .bulkString(let name) = elements[1] else { return false }
        let kinds: [SubscriptionKind] = [.channel, .pattern, .shardChannel]
        guard let kind = kinds.first(where: { $0.acknowledgement(subscribe: false) == type }) else { return false }
        let key = ChannelKey(kind: kind, name: name)
        guard machine.isUnsolicitedUnsubscribe(key) else { return false }
        let error = RedisError(.connectionClosed, "the server ended the subscription to '\(String(decoding: name, as: UTF8.self))'")
        for sink in machine.serverUnsubscribed(key) { fail(sink, error) }
        return true
    }

    func flush() {
        for sink in toWake { sink.wake() }
        toWake.removeAll(keepingCapacity: true)
    }

    func connectionClosed(_ error: RedisError) {
        flush()
        closedError = error
        for sink in machine.removeAll() {
            sink.ready.fail(error)
            sink.finish(closing ? .finished : .failed(error))
        }
    }
}
