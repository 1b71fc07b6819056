// Shared by the `subscriber` and `publisher` sample binaries: the notification format, connecting with retries,
// line-flushed output and signal handling.
import Dispatch
public import Foundation
public import RedisPubSub

/// The JSON message of the notifications demo: `{"id": 1, "text": "Hello", "sentAt": "2026-11-21T16:00:00Z"}`.
public struct Notification: Codable, Sendable, Equatable {
    public var id: Int
    public var text: String
    public var sentAt: Date

    public init(id: Int, text: String, sentAt: Date) {
        self.id = id
        self.text = text
        self.sentAt = sentAt
    }

    public static var encoder: JSONEncoder {
        let encoder = JSONEncoder()
        encoder.dateEncodingStrategy = .iso8601
        encoder.outputFormatting = .sortedKeys
        return encoder
    }

    public static var decoder: JSONDecoder {
        let decoder = JSONDecoder()
        decoder.dateDecodingStrategy = .iso8601
        return decoder
    }
}

/// Standard output and error, one flushed line at a time (so pipes and `docker logs` see each line at once).
public enum Console {
    public static func out(_ line: String) {
        FileHandle.standardOutput.write(Data((line + "\n").utf8))
    }

    public static func error(_ line: String) {
        FileHandle.standardError.write(Data((line + "\n").utf8))
    }
}

/// The configuration from `--url`, else `REDIS_URL`, else `redis://127.0.0.1:6379`; exits 1 on a malformed URL.
public func configuration(url: String?) -> RedisConfiguration {
    do {
        if let url { return try RedisConfiguration(url: url) }
        return try RedisConfiguration.fromEnvironment()
    } catch {
        Console.error("error: \(error.message)")
        exit(1)
    }
}

/// Connects, retrying every 250 ms while the server cannot be reached, for up to `timeout` seconds: the binaries are
/// started together with Redis (docker compose, `make demo`) and must not lose that race. Exits 1 with a clear message
/// when the time is up or the failure is not one that waiting can fix (bad password, say).
public func connectWithRetry<Connection>(
    _ configuration: RedisConfiguration,
    timeout seconds: Double,
    _ connect: (RedisConfiguration) async throws -> Connection
) async -> Connection {
    let deadline = ContinuousClock.now + .milliseconds(Int(seconds * 1000))
    var attempt = configuration
    while true {
        let remaining = deadline - .now
        attempt.connectTimeout = max(.milliseconds(100), min(configuration.connectTimeout, remaining))
        do {
            return try await connect(attempt)
        } catch let error as RedisError {
            let retryable: Set<RedisError.Code> = [.connectionRefused, .hostUnreachable, .nameResolutionFailed, .timeout, .connectionClosed]
            guard retryable.contains(error.code), ContinuousClock.now + .milliseconds(250) < deadline else {
                Console.error("error: cannot connect to \(configuration) within \(seconds) s: \(error)")
                exit(1)
            }
            try? await Task.sleep(for: .milliseconds(250))
        } catch {
            Console.error("error: \(error)")
            exit(1)
        }
    }
}

/// Calls `handler` once on the first SIGINT or SIGTERM (the default actions are switched off).
public final class ShutdownSignals {
    private let sources: [any DispatchSourceSignal]

    public init(_ handler: @escaping @Sendable () -> Void) {
        let once = Once()
        sources = [SIGINT, SIGTERM].map { signalNumber in
            signal(signalNumber, SIG_IGN)
            let source = DispatchSource.makeSignalSource(signal: signalNumber, queue: .global())
            source.setEventHandler { if once.first() { handler() } }
            source.resume()
            return source
        }
    }
}

private final class Once: @unchecked Sendable {
    // @unchecked Sendable because: `done` is only touched under `lock`.
    private let lock = NSLock()
    private var done = false
    func first() -> Bool {
        lock.lock()
        defer { lock.unlock() }
        if done { return false }
        done = true
        return true
    }
}
