import RedisPubSub
import Testing

/// The README's usage example, verbatim apart from the assertions, so it cannot rot.
@Suite("README examples")
struct ReadmeExampleTests {
    @Test func usageExample() async throws {
        // --- README: Use ---
        let connection = try await RedisConnection.connect(to: .fromEnvironment())  // REDIS_URL, else redis://127.0.0.1:6379
        try await connection.send("SET", "greeting", "hello")
        let greeting = try await connection.send("GET", "greeting").string           // "hello"
        let receivers = try await connection.publish("deploy finished", to: "events")
        print(greeting ?? "-", receivers)
        await connection.close()
        // ---
        #expect(greeting == "hello")
        #expect(receivers >= 0)
    }
}
