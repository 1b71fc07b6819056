/// The three families of Pub/Sub subscriptions.
enum SubscriptionKind: Hashable, Sendable {
    /// `SUBSCRIBE`: exact channel names.
    case channel
    /// `PSUBSCRIBE`: glob patterns.
    case pattern
    /// `SSUBSCRIBE`: sharded channels (Redis 7).
    case shardChannel

    var subscribeCommand: RedisArgument {
        switch self {
        case .channel: "SUBSCRIBE"
        case .pattern: "PSUBSCRIBE"
        case .shardChannel: "SSUBSCRIBE"
        }
    }

    var unsubscribeCommand: RedisArgument {
        switch self {
        case .channel: "UNSUBSCRIBE"
        case .pattern: "PUNSUBSCRIBE"
        case .shardChannel: "SUNSUBSCRIBE"
        }
    }

    /// For a stable order of commands.
    var order: Int {
        switch self {
        case .channel: 0
        case .pattern: 1
        case .shardChannel: 2
        }
    }

    /// The first element of the server's acknowledgement, e.g. `psubscribe`.
    func acknowledgement(subscribe: Bool) -> [UInt8] {
        switch (self, subscribe) {
        case (.channel, true): Array("subscribe".utf8)
        case (.pattern, true): Array("psubscribe".utf8)
        case (.shardChannel, true): Array("ssubscribe".utf8)
        case (.channel, false): Array("unsubscribe".utf8)
        case (.pattern, false): Array("punsubscribe".utf8)
        case (.shardChannel, false): Array("sunsubscribe".utf8)
        }
    }
}

/// One channel, pattern or sharded channel as the server knows it.
struct ChannelKey: Hashable, Sendable {
    let kind: SubscriptionKind
    let name: [UInt8]
}

/// Which subscriptions listen to which channels of one connection, and what the server must be told.
///
/// Channels are reference-counted: the first subscription to a channel sends `SUBSCRIBE`, the last one to leave
/// sends `UNSUBSCRIBE`. Every command sent for a channel gets a sequence number, so an acknowledgement is
/// attributed to exactly the command it answers even when a channel is left and joined again before the server
/// caught up. A pure value: the owner sends the commands it returns and resumes the callers it names.
struct PubSubStateMachine<Sink: AnyObject> {
    /// A command to send for one channel.
    struct Command: Hashable {
        let key: ChannelKey
        let subscribe: Bool
        let sequence: UInt64
    }

    struct Channel {
        /// The subscriptions listening, in the order they joined.
        var sinks: [Sink] = []
        /// Subscriptions waiting for this channel's SUBSCRIBE to be acknowledged: they get no messages until then,
        /// because what arrives before the acknowledgement was published before the server saw their SUBSCRIBE.
        var joining: [Sink] = []
        /// What the server will be subscribed to once it has processed every command sent so far.
        var subscribedAfterLastCommand = false
        /// The sequence number of the last command sent for this channel.
        var lastSequence: UInt64 = 0
        /// The last command was a SUBSCRIBE and its acknowledgement arrived.
        var confirmed = false
        /// UNSUBSCRIBE commands sent and not yet acknowledged.
        var unsubscribesInFlight = 0

        var isIdle: Bool { sinks.isEmpty && joining.isEmpty && !subscribedAfterLastCommand && unsubscribesInFlight == 0 }

        /// Everyone registered, listening or joining.
        var everyone: [Sink] { sinks + joining }
    }

    private(set) var channels: [ChannelKey: Channel] = [:]
    private var sequence: UInt64 = 0
    /// Subscriptions still waiting for acknowledgements, with the channels they wait for; `resubscribing` after a
    /// reconnect, else a first subscribe.
    private var waiting: [ObjectIdentifier: (sink: Sink, keys: Set<ChannelKey>, resubscribing: Bool)] = [:]
    /// Channels added to live subscriptions and not yet acknowledged, by request number (see ``add(_:to:request:)``).
    private var additions: [UInt64: (sink: Sink, keys: Set<ChannelKey>)] = [:]

    /// Subscriptions currently registered on at least one channel.
    var sinkCount: Int {
        var seen = Set<ObjectIdentifier>()
        for channel in channels.values { for sink in channel.everyone { seen.insert(ObjectIdentifier(sink)) } }
        return seen.count
    }

    /// Adds `sink` to `keys`. Returns the commands to send and whether every channel is already confirmed (then the
    /// subscription is live at once; otherwise ``acknowledged(_:)`` reports it later).
    ///
    /// With a `request` number, `sink` is a live subscription that adds `keys` to what it holds: keys it holds
    /// already are skipped, and ``acknowledged(_:)`` reports the request in `added` once the others are confirmed.
    mutating func add(_ sink: Sink, to keys: [ChannelKey], request: UInt64? = nil) -> (commands: [Command], confirmed: Bool) {
        var commands: [Command] = []
        var pending = Set<ChannelKey>()
        var seen = Set<ChannelKey>()
        for key in keys where seen.insert(key).inserted {
            var channel = channels[key] ?? Channel()
            if request != nil {  // a live subscription (only then can it be registered already)
                if channel.sinks.contains(where: { $0 === sink }) {
                    if !channel.confirmed { pending.insert(key) }  // held, and being resubscribed: wait for it too
                    continue
                }
                if channel.joining.contains(where: { $0 === sink }) {
                    pending.insert(key)
                    continue
                }
            }
            if !channel.subscribedAfterLastCommand {
                sequence += 1
                channel.subscribedAfterLastCommand = true
                channel.lastSequence = sequence
                channel.confirmed = false
                commands.append(Command(key: key, subscribe: true, sequence: sequence))
            }
            if channel.confirmed {
                channel.sinks.append(sink)
            } else {
                channel.joining.append(sink)
                pending.insert(key)
            }
            channels[key] = channel
        }
        if pending.isEmpty { return (commands, true) }
        if let request {
            additions[request] = (sink, pending)
        } else {
            waiting[ObjectIdentifier(sink)] = (sink, pending, false)
        }
        return (commands, false)
    }

    /// Removes `sink` from `keys` (all of them: the subscription ends). Returns UNSUBSCRIBE commands for the
    /// channels nobody listens to any more.
    mutating func remove(_ sink: Sink, from keys: [ChannelKey]) -> [Command] {
        waiting[ObjectIdentifier(sink)] = nil
        for (request, addition) in additions where addition.sink === sink { additions[request] = nil }
        return unregister(sink, from: keys)
    }

    /// Removes some of a live subscription's `keys`. Returns the UNSUBSCRIBE commands to send, whether the
    /// subscription is now resubscribed (it waited for a reconnect's acknowledgements of only these keys), and the
    /// additions that waited only for these keys (they are settled: the keys are gone).
    mutating func remove(
        _ sink: Sink, someOf keys: [ChannelKey]
    ) -> (commands: [Command], resubscribed: Bool, settled: [UInt64]) {
        let removed = Set(keys)
        var resubscribed = false
        let id = ObjectIdentifier(sink)
        if var entry = waiting[id] {
            entry.keys.subtract(removed)
            if entry.keys.isEmpty {
                waiting[id] = nil
                resubscribed = entry.resubscribing
            } else {
                waiting[id] = entry
            }
        }
        var settled: [UInt64] = []
        for (request, var addition) in additions where addition.sink === sink {
            addition.keys.subtract(removed)
            if addition.keys.isEmpty {
                additions[request] = nil
                settled.append(request)
            } else {
                additions[request] = addition
            }
        }
        return (unregister(sink, from: keys), resubscribed, settled.sorted())
    }

    /// Forgets an addition whose caller stopped waiting (its keys stay registered until removed).
    mutating func forgetAddition(_ request: UInt64) {
        additions[request] = nil
    }

    /// Every addition still waiting, forgotten, and its subscription taken off the channels it was still joining
    /// (the connection was lost: the caller replays the additions after the reconnect).
    mutating func takeAdditions() -> [(request: UInt64, sink: Sink)] {
        defer { additions = [:] }
        for addition in additions.values {
            for key in addition.keys {
                guard var channel = channels[key],
                      let index = channel.joining.firstIndex(where: { $0 === addition.sink })
                else { continue }
                channel.joining.remove(at: index)
                store(channel, at: key)
            }
        }
        return additions.sorted { $0.key < $1.key }.map { ($0.key, $0.value.sink) }
    }

    /// Whether `sink` waits for the acknowledgements of a first subscribe or a resubscription.
    func isWaiting(_ sink: Sink) -> Bool {
        waiting[ObjectIdentifier(sink)] != nil
    }

    private mutating func unregister(_ sink: Sink, from keys: [ChannelKey]) -> [Command] {
        var commands: [Command] = []
        var seen = Set<ChannelKey>()
        for key in keys where seen.insert(key).inserted {
            guard var channel = channels[key] else { continue }
            if let index = channel.sinks.firstIndex(where: { $0 === sink }) {
                channel.sinks.remove(at: index)
            } else if let index = channel.joining.firstIndex(where: { $0 === sink }) {
                channel.joining.remove(at: index)
            } else {
                continue
            }
            if channel.sinks.isEmpty && channel.joining.isEmpty && channel.subscribedAfterLastCommand {
                sequence += 1
                channel.subscribedAfterLastCommand = false
                channel.lastSequence = sequence
                channel.confirmed = false
                channel.unsubscribesInFlight += 1
                commands.append(Command(key: key, subscribe: false, sequence: sequence))
            }
            store(channel, at: key)
        }
        return commands
    }

    /// The server acknowledged `command`. Returns the subscriptions that are now live (all their channels confirmed):
    /// new ones in `ready`, ones that came back after a reconnect in `resubscribed`.
    /// Additions whose every key is now confirmed are in `added`.
    mutating func acknowledged(_ command: Command) -> (ready: [Sink], resubscribed: [Sink], added: [UInt64]) {
        guard var channel = channels[command.key] else { return ([], [], []) }
        if !command.subscribe {
            channel.unsubscribesInFlight -= 1
            store(channel, at: command.key)
            return ([], [], [])
        }
        guard command.sequence == channel.lastSequence else { return ([], [], []) }  // superseded by an UNSUBSCRIBE
        channel.confirmed = true
        channel.sinks += channel.joining  // from now on, messages are theirs too
        channel.joining = []
        store(channel, at: command.key)
        var ready: [Sink] = []
        var resubscribed: [Sink] = []
        for sink in channel.sinks {
            let id = ObjectIdentifier(sink)
            guard var entry = waiting[id], entry.keys.remove(command.key) != nil else { continue }
            if entry.keys.isEmpty {
                waiting[id] = nil
                if entry.resubscribing { resubscribed.append(sink) } else { ready.append(sink) }
            } else {
                waiting[id] = entry
            }
        }
        var added: [UInt64] = []
        for (request, var addition) in additions where addition.keys.remove(command.key) != nil {
            if addition.keys.isEmpty {
                additions[request] = nil
                added.append(request)
            } else {
                additions[request] = addition
            }
        }
        return (ready, resubscribed, added.sorted())
    }

    /// The connection was lost: the server forgot every subscription. Subscriptions still waiting for their first
    /// acknowledgement are dropped and returned (the caller adds them again after the reconnect); the others stay, to
    /// be resubscribed.
    mutating func connectionLost() -> [Sink] {
        var dropped: [Sink] = []
        for entry in waiting.values where !entry.resubscribing { dropped.append(entry.sink) }
        waiting = [:]
        let droppedIDs = Set(dropped.map(ObjectIdentifier.init))
        for (key, var channel) in channels {
            channel.sinks.removeAll { droppedIDs.contains(ObjectIdentifier($0)) }
            channel.joining.removeAll { droppedIDs.contains(ObjectIdentifier($0)) }
            channel.subscribedAfterLastCommand = false
            channel.confirmed = false
            channel.unsubscribesInFlight = 0
            store(channel, at: key)
        }
        return dropped
    }

    /// Connected again: SUBSCRIBE (PSUBSCRIBE, SSUBSCRIBE) for every channel someone listens to. Each subscription is
    /// reported by ``acknowledged(_:)`` in `resubscribed` once all its channels are confirmed again.
    mutating func resubscribeAll() -> [Command] {
        var commands: [Command] = []
        let keys = channels.keys.sorted { a, b in
            a.kind.order != b.kind.order ? a.kind.order < b.kind.order : a.name.lexicographicallyPrecedes(b.name)
        }
        for key in keys {
            guard var channel = channels[key], !channel.sinks.isEmpty else { continue }
            sequence += 1
            channel.subscribedAfterLastCommand = true
            channel.lastSequence = sequence
            channel.confirmed = false
            channels[key] = channel
            commands.append(Command(key: key, subscribe: true, sequence: sequence))
            for sink in channel.sinks {
                let id = ObjectIdentifier(sink)
                var entry = waiting[id] ?? (sink, [], true)
                entry.keys.insert(key)
                waiting[id] = entry
            }
        }
        return commands
    }

    /// The server refused `command` with an error reply (for example an ACL `NOPERM`). Returns the subscriptions on
    /// that channel, which must fail; they are removed from this channel only (the owner removes them elsewhere).
    mutating func refused(_ command: Command) -> [Sink] {
        guard var channel = channels[command.key] else { return [] }
        if !command.subscribe {
            channel.unsubscribesInFlight -= 1
            store(channel, at: command.key)
            return []
        }
        guard command.sequence == channel.lastSequence else { return [] }
        channel.subscribedAfterLastCommand = false
        channel.confirmed = false
        let failed = channel.everyone
        channel.sinks = []
        channel.joining = []
        store(channel, at: command.key)
        return failed
    }

    /// Closing: UNSUBSCRIBE every channel, keeping the subscriptions registered so the messages that arrive before
    /// the acknowledgements are still delivered.
    mutating func unsubscribeAll() -> [Command] {
        var commands: [Command] = []
        for (key, var channel) in channels where channel.subscribedAfterLastCommand {
            sequence += 1
            channel.subscribedAfterLastCommand = false
            channel.lastSequence = sequence
            channel.confirmed = false
            channel.unsubscribesInFlight += 1
            channels[key] = channel
            commands.append(Command(key: key, subscribe: false, sequence: sequence))
        }
        return commands
    }

    /// Whether an unsubscribe acknowledgement for `key` answers none of our commands: the server dropped the
    /// subscription by itself (a sharded channel's slot moved, for example).
    func isUnsolicitedUnsubscribe(_ key: ChannelKey) -> Bool {
        guard let channel = channels[key] else { return false }
        return channel.subscribedAfterLastCommand
    }

    /// The server dropped `key` by itself. Returns the subscriptions that lost it.
    mutating func serverUnsubscribed(_ key: ChannelKey) -> [Sink] {
        guard var channel = channels[key] else { return [] }
        let lost = channel.everyone
        channel.sinks = []
        channel.joining = []
        channel.subscribedAfterLastCommand = false
        channel.confirmed = false
        store(channel, at: key)
        return lost
    }

    /// The subscriptions a message on `key` goes to (not those still joining).
    func recipients(_ key: ChannelKey) -> [Sink] {
        channels[key]?.sinks ?? []
    }

    /// Forgets everything (the connection is gone). Returns every subscription, each once.
    mutating func removeAll() -> [Sink] {
        var seen = Set<ObjectIdentifier>()
        var all: [Sink] = []
        for channel in channels.values {
            for sink in channel.everyone where seen.insert(ObjectIdentifier(sink)).inserted { all.append(sink) }
        }
        for entry in waiting.values where seen.insert(ObjectIdentifier(entry.sink)).inserted { all.append(entry.sink) }
        channels = [:]
        waiting = [:]
        additions = [:]
        return all
    }

    private mutating func store(_ channel: Channel, at key: ChannelKey) {
        channels[key] = channel.isIdle ? nil : channel
    }
}
