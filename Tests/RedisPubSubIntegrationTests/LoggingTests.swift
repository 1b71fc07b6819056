import Foundation
import Logging
import RedisPubSub
import Testing

/// Collects log lines in memory.
final class CapturingLogHandler: LogHandler, @unchecked Sendable {
    // @unchecked Sendable because: `lines` is only touched under `lock`; swift-log mutates the rest on copies.
    final class Storage: @unchecked Sendable {
        // @unchecked Sendable because: `lines` is only touched under `lock`.
        let lock = NSLock()
        var lines: [String] = []
        var text: String { lock.lock(); defer { lock.unlock() }; return lines.joined(separator: "\n") }
    }
    let storage: Storage
    var metadata: Logger.Metadata = [:]
    var logLevel: Logger.Level = .trace
    init(storage: Storage) { self.storage = storage }
    subscript(metadataKey key: String) -> Logger.Metadata.Value? {
        get { metadata[key] }
        set { metadata[key] = newValue }
    }
    func log(event: LogEvent) {
        storage.lock.lock()
        storage.lines.append("\(event.level) \(event.message) \(event.metadata ?? [:])")
        storage.lock.unlock()
    }
}

@Suite("Logging")
struct LoggingTests {
    @Test func logsConnectsAndClosesWithoutCredentials() async throws {
        let server = try RedisServer.start(["--requirepass", "very-secret-pw"])
        defer { server.stop() }
        let storage = CapturingLogHandler.Storage()
        let logger = Logger(label: "test") { _ in CapturingLogHandler(storage: storage) }
        let connection = try await RedisConnection.connect(
            to: .init(url: "redis://:very-secret-pw@127.0.0.1:\(server.port)"), logger: logger)
        await connection.close()
        _ = try? await RedisConnection.connect(to: .init(url: "redis://:wrong-pw@127.0.0.1:\(server.port)"), logger: logger)
        let text = storage.text
        #expect(text.contains("connected"))
        #expect(text.contains("connection closed"))
        #expect(text.contains("connect failed"))
        #expect(!text.contains("very-secret-pw"))
        #expect(!text.contains("wrong-pw"))
    }

    @Test func defaultLoggerIsSilent() {
        // The default is swift-log's no-op handler: nothing is formatted or written.
        #expect(RedisConnection.disabledLogger.logLevel == .critical)
        #expect(RedisConnection.disabledLogger.handler is SwiftLogNoOpLogHandler)
    }
}
