import Foundation
@testable import RedisPubSub
import Testing

@Suite("Tasks on the connection's executor; what cancellation does to a publish")
struct ExecutorTests {
    @Test func tasksPreferringTheTaskExecutorRunOnTheLoopThread() async throws {
        let (subscriber, publisher) = try await pubSubPair()
        let onLoop = await Task(executorPreference: publisher.taskExecutor) { EventLoop.shared.inLoop }.value
        let elsewhere = await Task { EventLoop.shared.inLoop }.value
        #expect(onLoop)
        #expect(!elsewhere)
        #expect(subscriber.taskExecutor === publisher.connection.taskExecutor)
        await subscriber.close()
        await publisher.close()
    }

    /// Many tasks on the loop: their commands are written in several batches per turn (early writes), and every
    /// publish still gets its own count back, in each task's order.
    @Test func manyPublishingTasksOnTheLoopKeepEveryTasksOrder() async throws {
        let (subscriber, publisher) = try await pubSubPair()
        let channel = uniqueName("ch")
        let subscription = try await subscriber.subscribe(to: channel, bufferingPolicy: .unbounded)
        let tasks = 100, perTask = 200
        let counts = try await withThrowingTaskGroup(of: [Int].self) { group in
            for task in 0..<tasks {
                group.addTask(executorPreference: publisher.taskExecutor) {
                    var counts: [Int] = []
                    for index in 0..<perTask { counts.append(try await publisher.publish("\(task) \(index)", to: channel)) }
                    return counts
                }
            }
            return try await group.reduce(into: []) { $0 += $1 }
        }
        #expect(counts.count == tasks * perTask && counts.allSatisfy { $0 == 1 })
        let messages = try await withTaskExecutorPreference(subscriber.taskExecutor) {
            try await collect(subscription, tasks * perTask)
        }
        #expect(everyTasksMessagesInOrder(messages, tasks: tasks, perTask: perTask))
        await subscriber.close()
        await publisher.close()
    }

    /// Code on the loop can keep it busy past a command's deadline while the reply is already in the socket: the
    /// reply is read before the deadline is judged.
    @Test func aReplyThatArrivedWhileTheLoopWasBusyBeatsItsTimeout() async throws {
        let server = try RedisServer.start()
        defer { server.stop() }
        var configuration = try RedisConfiguration(url: server.url)
        // Margins for a loaded machine: this task must get to its `execute` before the deadline.
        configuration.commandTimeout = .seconds(3)
        // A loop of its own: blocking the shared one would stall every other test's I/O and timers.
        let loop = EventLoop(name: "busy-loop-test")
        let connection = try await RedisConnection.connect(to: configuration, logger: RedisConnection.disabledLogger, on: loop)
        server.pause()
        let call = Task { try await connection.send("ECHO", "answered in time") }
        try await Task.sleep(for: .milliseconds(50))  // written; the frozen server has not answered
        let pid = server.process.processIdentifier
        loop.execute {
            kill(pid, SIGCONT)  // the server answers at once...
            usleep(3_500_000)  // ...while the loop is busy past the deadline
        }
        #expect(try await call.value.string == "answered in time")
        await connection.close()
    }

    @Test func aPublishOrBatchFromAnAlreadyCancelledTaskIsNotSent() async throws {
        let (subscriber, publisher) = try await pubSubPair()
        let channel = uniqueName("ch")
        let subscription = try await subscriber.subscribe(to: channel)
        let single = Task {
            withUnsafeCurrentTask { $0?.cancel() }
            return try await publisher.publish("should not be sent", to: channel)
        }
        await #expect(throws: RedisError(.cancelled, "the task was cancelled")) { try await single.value }
        let batch = Task {
            withUnsafeCurrentTask { $0?.cancel() }
            return try await publisher.publish(contentsOf: ["not sent either", "nor this"], to: channel)
        }
        await #expect(throws: RedisError(.cancelled, "the task was cancelled")) { try await batch.value }
        try await publisher.publish("marker", to: channel)
        #expect(try await collect(subscription, 1).map(\.string) == ["marker"])
        await subscriber.close()
        await publisher.close()
    }

    /// A sent PUBLISH reaches subscribers whatever its caller does, so cancellation does not pretend otherwise:
    /// the call waits for the server's count.
    @Test func aSentPublishIsNotInterruptedByCancellation() async throws {
        let server = try RedisServer.start()
        defer { server.stop() }
        let configuration = try RedisConfiguration(url: server.url)
        let subscriber = try await Subscriber.connect(to: configuration)
        let publisher = try await Publisher.connect(to: configuration)
        let channel = uniqueName("ch")
        let subscription = try await subscriber.subscribe(to: channel)
        server.pause()
        let call = Task { try await publisher.publish("sent before the cancel", to: channel) }
        try await Task.sleep(for: .milliseconds(100))
        call.cancel()
        try await Task.sleep(for: .milliseconds(100))
        server.resume()
        #expect(try await call.value == 1)
        #expect(try await collect(subscription, 1).map(\.string) == ["sent before the cancel"])
        await subscriber.close()
        await publisher.close()
    }

    @Test func aSentPublishStillEndsAtTheCommandTimeout() async throws {
        let server = try RedisServer.start()
        defer { server.stop() }
        var configuration = try RedisConfiguration(url: server.url)
        configuration.commandTimeout = .milliseconds(300)
        let publisher = try await Publisher.connect(to: configuration)
        server.pause()
        let call = Task { try await publisher.publish("into a frozen server", to: uniqueName("ch")) }
        try await Task.sleep(for: .milliseconds(50))
        call.cancel()
        let time = await elapsed {
            // Overdue with nothing read since it was written: the connection is declared dead, and the publish fails
            // with it as connectionClosed (what PublishRetry sends again).
            await #expect { try await call.value } throws: { isRedisError($0, .connectionClosed) }
        }
        #expect(time < .seconds(5))
        server.resume()
        await publisher.close()
    }
}

@Suite("Publishing in batches")
struct BatchPublishTests {
    @Test func aBatchArrivesInOrderWithOneCountPerMessage() async throws {
        let (subscriber, publisher) = try await pubSubPair()
        let channel = uniqueName("ch"), shard = uniqueName("shard")
        let subscription = try await subscriber.subscribe(to: channel)
        let shardSubscription = try await subscriber.subscribe(toShardChannels: shard)
        let messages = (0..<1000).map { "message \($0)" }
        #expect(try await publisher.publish(contentsOf: messages, to: channel) == Array(repeating: 1, count: 1000))
        #expect(try await collect(subscription, 1000).map(\.string) == messages)
        #expect(try await publisher.publish(contentsOf: [[1, 2], [3]] as [[UInt8]], toShard: shard) == [1, 1])
        #expect(try await collect(shardSubscription, 2).map(\.payload) == [[1, 2], [3]])
        #expect(try await publisher.publish(contentsOf: [String](), to: channel) == [])
        // The connection's replies stay matched to their callers afterwards.
        #expect(try await publisher.publish("after", to: uniqueName("ch")) == 0)
        #expect(try await publisher.connection.send("ECHO", "still aligned").string == "still aligned")
        await subscriber.close()
        await publisher.close()
    }

    @Test func aBatchIntoAFrozenServerFailsAtTheCommandTimeoutAndTheConnectionIsReplaced() async throws {
        let server = try RedisServer.start()
        defer { server.stop() }
        var configuration = try RedisConfiguration(url: server.url)
        configuration.commandTimeout = .milliseconds(300)
        let publisher = try await Publisher.connect(to: configuration)
        let events = EventRecorder(publisher.events())
        server.pause()
        await #expect {
            try await publisher.publish(contentsOf: (0..<500).map { "m\($0)" }, to: uniqueName("ch"))
        } throws: { isRedisError($0, .connectionClosed) }
        server.resume()
        try await events.reconnected()
        // The 500 late replies went to the old connection: none is taken for the next command's.
        #expect(try await publisher.connection.send("ECHO", "next").string == "next")
        await publisher.close()
    }
}
