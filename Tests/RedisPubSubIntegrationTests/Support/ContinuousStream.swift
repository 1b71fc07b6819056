import Foundation
@testable import RedisPubSub
import Testing

/// A continuous SPUBLISH stream to one sharded channel and a subscription reading it, with both sides recorded, so a
/// test can check that messages were lost only inside the gaps the subscription reported.
final class ContinuousStream: @unchecked Sendable {
    // @unchecked Sendable because: every mutable property is behind `state`'s lock.
    struct Published {
        let sequence: Int
        /// When the publish was called and when it returned: the server took the message somewhere in between (a
        /// manual failover pauses the old primary's writes, and the publish then follows MOVED to the new one).
        let sentAt: Date
        let answeredAt: Date
    }

    private struct State {
        var published: [Published] = []
        var received: [Int] = []
        var events: [(Date, SubscriptionEvent)] = []
        var stop = false
    }

    private let state = Locked(State())
    let channel: String
    private var tasks: [Task<Void, Never>] = []

    /// Starts publishing `channel` every `interval` through `publisher`, and reading `subscription`.
    init(channel: String, publisher: ClusterPublisher, subscription: Subscription, interval: Duration = .milliseconds(2)) {
        self.channel = channel
        let state = self.state
        let events = subscription.events()
        tasks.append(Task {
            for await event in events { state.withLock { $0.events.append((Date(), event)) } }
        })
        tasks.append(Task {
            do {
                for try await message in subscription {
                    guard let sequence = Int(message.string) else { continue }
                    state.withLock { $0.received.append(sequence) }
                }
            } catch {
                Issue.record("the subscription failed: \(error)")
            }
        })
        tasks.append(Task {
            var sequence = 0
            while !state.withLock({ $0.stop }) {
                let sentAt = Date()
                if (try? await publisher.publish("\(sequence)", toShard: channel)) != nil {
                    let published = Published(sequence: sequence, sentAt: sentAt, answeredAt: Date())
                    state.withLock { $0.published.append(published) }
                }
                sequence += 1
                try? await Task.sleep(for: interval)
            }
        })
    }

    /// The subscription's gaps so far: from each `disconnected` to the `resubscribed` after it (open-ended while the
    /// subscription is deaf).
    var gaps: [(from: Date, to: Date?, length: Duration?)] {
        var gaps: [(from: Date, to: Date?, length: Duration?)] = []
        for (_, event) in state.withLock({ $0.events }) {
            switch event {
            case .disconnected(let at, _): gaps.append((at, nil, nil))
            case .resubscribed(let at, let gap):
                if let last = gaps.indices.last, gaps[last].to == nil { gaps[last] = (gaps[last].from, at, gap) }
            case .subscribed: break
            }
        }
        return gaps
    }

    var receivedCount: Int { state.withLock { $0.received.count } }

    /// Waits until the subscription reported `count` gaps and is back from each.
    func waitForGaps(_ count: Int, timeout: Duration = .seconds(30)) async throws {
        try await waitUntil(timeout: timeout) { [self] in
            let gaps = self.gaps
            return gaps.count >= count && gaps.allSatisfy { $0.to != nil }
        }
    }

    /// Stops publishing, waits until everything published after the last gap arrived, and checks that every message
    /// that did not arrive was in flight during a gap (give or take `margin`), that none arrived twice, and that they
    /// arrived in order. Returns how many were lost.
    ///
    /// With `inOrder` false, order and uniqueness are not required, only counted: around a failover Redis itself can
    /// deliver a message late or twice (the old primary's SPUBLISH reaches its replica over the cluster bus, and
    /// that replica, promoted, delivers it to the subscription made there meanwhile).
    @discardableResult
    func finish(
        margin: TimeInterval = 0.25, inOrder: Bool = true, sourceLocation: SourceLocation = #_sourceLocation
    ) async throws -> (lost: Int, outOfOrder: Int) {
        try await Task.sleep(for: .milliseconds(200))
        state.withLock { $0.stop = true }
        await tasks[2].value
        let lastPublished = state.withLock { $0.published.last?.sequence }
        if let lastPublished {
            try await waitUntil(timeout: .seconds(10)) { [self] in
                state.withLock { ($0.received.last ?? -1) >= lastPublished }
            }
        }
        tasks[0].cancel()
        tasks[1].cancel()
        let (published, received) = state.withLock { ($0.published, $0.received) }
        let gaps = self.gaps
        // Booleans, not the arrays: a failed expectation prints its operands, and these hold 100,000 numbers.
        let disorder = zip(received, received.dropFirst()).filter { $0 >= $1 }
        if inOrder {
            #expect(disorder.isEmpty, "out of order or repeated: \(disorder.prefix(3).map { "\($0) then \($1)" })",
                    sourceLocation: sourceLocation)
        }
        let got = Set(received)
        let lost = published.filter { !got.contains($0.sequence) }
        for message in lost {
            // In flight during the gap: called before it ended and answered after it began.
            let inside = gaps.contains { gap in
                message.answeredAt.timeIntervalSince(gap.from) >= -margin
                    && (gap.to.map { message.sentAt.timeIntervalSince($0) <= margin } ?? true)
            }
            let account = "message \(message.sequence) sent at \(message.sentAt.timeIntervalSince1970), answered at "
                + "\(message.answeredAt.timeIntervalSince1970), was lost outside every gap "
                + "\(gaps.map { ($0.from.timeIntervalSince1970, $0.to?.timeIntervalSince1970) })"
            #expect(inside, "\(account)",
                    sourceLocation: sourceLocation)
        }
        return (lost.count, disorder.count)
    }
}

/// The 95th percentile of `durations`.
func percentile95(_ durations: [Duration]) -> Duration {
    let sorted = durations.sorted()
    guard !sorted.isEmpty else { return .zero }
    return sorted[min(sorted.count - 1, Int((Double(sorted.count) * 0.95).rounded(.up)) - 1)]
}
