import Foundation
@testable import RedisPubSub
import Testing

/// Reads `count` messages, failing the test (instead of hanging) after `timeout`.
func collect(
    _ subscription: Subscription,
    _ count: Int,
    timeout: Duration = .seconds(20),
    sourceLocation: SourceLocation = #_sourceLocation
) async throws -> [Message] {
    let received = Locked<[String]>([])
    return try await withThrowingTaskGroup(of: [Message]?.self) { group in
        group.addTask {
            var messages: [Message] = []
            for try await message in subscription {
                messages.append(message)
                received.withLock { $0.append(String(decoding: message.payload.prefix(40), as: UTF8.self)) }  // not all 16 MB
                if messages.count == count { break }
            }
            return messages
        }
        group.addTask {
            try await Task.sleep(for: timeout)
            return nil
        }
        let first = try await group.next()!
        group.cancelAll()
        guard let messages = first else {
            let got = received.withLock { $0 }
            let dropped = subscription.droppedMessageCount
            let text = "timed out waiting for \(count) messages (\(got.count) received, \(dropped) dropped): \(got.prefix(20))"
            Issue.record(Comment(rawValue: text), sourceLocation: sourceLocation)
            return []
        }
        return messages
    }
}

/// Whether `messages`, each `"<task> <index>"`, hold every one of `tasks` tasks' `perTask` messages, each task's
/// in order.
func everyTasksMessagesInOrder(_ messages: some Sequence<Message>, tasks: Int, perTask: Int) -> Bool {
    var next = [Int](repeating: 0, count: tasks)
    for message in messages {
        let parts = message.string.split(separator: " ").compactMap { Int($0) }
        guard parts.count == 2, parts[0] < tasks, parts[1] == next[parts[0]] else { return false }
        next[parts[0]] += 1
    }
    return next.allSatisfy { $0 == perTask }
}

/// A subscriber and a publisher on the shared server.
func pubSubPair() async throws -> (Subscriber, Publisher) {
    let configuration = try SharedServer.configuration
    return (try await Subscriber.connect(to: configuration), try await Publisher.connect(to: configuration))
}
