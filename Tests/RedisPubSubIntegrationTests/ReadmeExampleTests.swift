import RedisPubSub
import Testing

/// The README's examples, verbatim apart from the assertions, so they cannot rot.
@Suite("README examples")
struct ReadmeExampleTests {
    struct Order: Codable { let id: Int; let total: Double }

    @Test func pubSubExample() async throws {
        _ = try SharedServer.configuration  // sets REDIS_URL when `make test` did not
        var seen: [Int] = []
        // --- README: Use ---
        let configuration = try RedisConfiguration.fromEnvironment()   // REDIS_URL, else redis://127.0.0.1:6379
        let subscriber = try await Subscriber.connect(to: configuration)
        let publisher = try await Publisher.connect(to: configuration)

        let subscription = try await subscriber.subscribe(to: "orders")   // returns once the server acknowledged
        try await publisher.publish(json: Order(id: 1, total: 9.5), to: "orders")
        try await publisher.publish("not an order", to: "orders")

        for try await result in subscription.decoded(as: Order.self) {
            guard case .success(let order) = result else { print("skipped: \(result)"); continue }
            print("order", order.id, order.total)
            seen.append(order.id)
            break                                      // leaves the loop; the subscription ends at close()
        }
        await subscriber.close()
        await publisher.close()
        // ---
        #expect(seen == [1])
    }

    @Test func commandsExample() async throws {
        _ = try SharedServer.configuration
        // --- README: Commands ---
        let connection = try await RedisConnection.connect(to: .fromEnvironment())
        try await connection.send("SET", "greeting", "hello")
        let greeting = try await connection.send("GET", "greeting").string           // "hello"
        let receivers = try await connection.publish("deploy finished", to: "events")
        print(greeting ?? "-", receivers)
        await connection.close()
        // ---
        #expect(greeting == "hello")
        #expect(receivers >= 0)
    }

    @Test func taskExecutorExample() async throws {
        let publisher = try await Publisher.connect(to: try SharedServer.configuration)
        let subscriber = try await Subscriber.connect(to: try SharedServer.configuration)
        let subscription = try await subscriber.subscribe(to: "activity")
        let batches = [["a", "b"], ["c"], ["d", "e", "f"]]
        // --- README: Publishing (taskExecutor) ---
        try await withThrowingTaskGroup(of: Void.self) { group in
            for batch in batches {
                group.addTask(executorPreference: publisher.taskExecutor) {
                    for event in batch { try await publisher.publish(event, to: "activity") }
                }
            }
            try await group.waitForAll()
        }
        // ---
        let received = try await collect(subscription, 6).map(\.string)
        #expect(received.sorted() == ["a", "b", "c", "d", "e", "f"])
        await subscriber.close()
        await publisher.close()
    }
}
