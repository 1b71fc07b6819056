/// Sends events to every current listener; each listener is an `AsyncStream` keeping its newest 256 events, and
/// starting with the last event sent before it listened (where things stand), so a late listener misses nothing that
/// matters. Events are rare (connection changes), so a stream per listener costs nothing that matters.
final class EventBroadcaster<Event: Sendable>: Sendable {
    private struct State {
        var listeners: [Int: AsyncStream<Event>.Continuation] = [:]
        var nextID = 0
        var finished = false
        var last: Event?
    }
    private let state = Locked(State())
    private let replaysLast: Bool

    /// `replaysLast`: whether a new listener starts with the last event sent (for events that tell where things
    /// stand); `false` for events that each report something that happened once, which a late listener must not see
    /// twice.
    init(replaysLast: Bool = true) {
        self.replaysLast = replaysLast
    }

    /// A broadcaster that goes away ends its streams: a listener never waits for events that cannot come.
    deinit {
        finish()
    }

    /// A new listener's stream: the last event sent so far, then the events sent from now on.
    func stream() -> AsyncStream<Event> {
        let (stream, continuation) = AsyncStream.makeStream(of: Event.self, bufferingPolicy: .bufferingNewest(256))
        let id = state.withLock { state -> Int? in
            guard !state.finished else { return nil }  // ended: nothing stands any more
            if let last = state.last { continuation.yield(last) }  // under the lock: before any later event
            state.nextID += 1
            state.listeners[state.nextID] = continuation
            return state.nextID
        }
        guard let id else {
            continuation.finish()
            return stream
        }
        continuation.onTermination = { [weak self] _ in
            _ = self?.state.withLock { $0.listeners.removeValue(forKey: id) }
        }
        return stream
    }

    func send(_ event: Event) {
        // Yielded under the lock, so every listener sees the events in the order they were sent, and a new listener's
        // replayed event is never newer than the first live one (yielding to an AsyncStream never blocks).
        state.withLock { state in
            if replaysLast { state.last = event }
            for listener in state.listeners.values { listener.yield(event) }
        }
    }

    /// Ends every stream, present and future.
    func finish() {
        let listeners = state.withLock { state -> [AsyncStream<Event>.Continuation] in
            state.finished = true
            defer { state.listeners = [:] }
            return Array(state.listeners.values)
        }
        for listener in listeners { listener.finish() }
    }
}
