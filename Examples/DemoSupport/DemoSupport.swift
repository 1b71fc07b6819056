// Shared by the `subscriber` and `publisher` sample binaries: the notification format, connecting with retries,
// line-flushed output and signal handling.
public import ArgumentParser
import Dispatch
public import Foundation
public import Logging
public import RedisPubSub
public import ServiceLifecycle
import UnixSignals

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

/// The TLS files of a `rediss://` connection, the same options on both binaries.
public struct TLSOptions: ParsableArguments {
    @Option(name: .customLong("tls-ca-file"), help: "PEM file of the CA certificates that sign the server's certificate (rediss:// only). Default: the system's trust store.")
    public var caFile: String?

    @Option(name: .customLong("tls-cert-file"), help: "PEM file of a client certificate for mutual TLS (rediss:// only).")
    public var certificateFile: String?

    @Option(name: .customLong("tls-key-file"), help: "PEM file of the client certificate's private key (default: read from --tls-cert-file).")
    public var keyFile: String?

    public init() {}

    public func validate() throws {
        if keyFile != nil && certificateFile == nil { throw ValidationError("--tls-key-file needs --tls-cert-file") }
    }

    /// Whether any option was given.
    var isEmpty: Bool { caFile == nil && certificateFile == nil && keyFile == nil }
}

/// The configuration with the binaries' options applied; exits 1 when a TLS option comes with a URL without TLS.
public func configuration(url: String?, healthCheckInterval: Double, tls options: TLSOptions = TLSOptions()) -> RedisConfiguration {
    var configuration = configuration(url: url)
    configuration.healthCheckInterval = healthCheckInterval > 0 ? .seconds(healthCheckInterval) : nil
    guard !options.isEmpty else { return configuration }
    guard configuration.tls != nil else {
        Console.error("error: --tls-ca-file, --tls-cert-file and --tls-key-file need a rediss:// URL (got \(configuration))")
        exit(1)
    }
    if let caFile = options.caFile { configuration.tls?.trust = .certificateAuthorityFile(caFile) }
    configuration.tls?.certificateFile = options.certificateFile
    configuration.tls?.privateKeyFile = options.keyFile
    return configuration
}

/// Writes each connection change to standard error ("Disconnected from ...: cause", "Reconnected ...").
public func logConnectionEvents(_ events: AsyncStream<ConnectionEvent>, name: String) -> Task<Void, Never> {
    Task {
        for await event in events {
            switch event {
            case .disconnected(_, let cause): Console.error("\(name): disconnected: \(cause)")
            case .reconnecting(let attempt, let delay, let error) where attempt == 1 || attempt % 10 == 0:
                Console.error("\(name): reconnecting (attempt \(attempt), in \(delay))" + (error.map { " after: \($0)" } ?? ""))
            case .reconnected(_, let downtime): Console.error("\(name): reconnected after \(downtime)")
            case .closed(let error?): Console.error("\(name): closed: \(error)")
            default: break
            }
        }
    }
}

/// Writes how a cluster client follows the cluster to standard error: map changes, nodes lost and back, channels
/// moved by a slot migration or a failover.
public func logClusterEvents(_ events: AsyncStream<ClusterEvent>, name: String) -> Task<Void, Never> {
    Task {
        for await event in events {
            switch event {
            case .channelsMoved(let from, let to, let channels):
                Console.error("\(name): \(channels.count == 1 ? "channel" : "\(channels.count) channels") moved from \(from) to \(to) (slot migration or failover)"
                    + (channels.count <= 3 ? ": " + channels.map(\.description).joined(separator: ", ") : ""))
            case .nodeDisconnected(let node, let cause): Console.error("\(name): lost node \(node): \(cause)")
            case .nodeConnected(let node): Console.error("\(name): connected to node \(node)")
            case .topologyChanged(let primaries): Console.error("\(name): cluster map changed: primaries \(primaries.joined(separator: ", "))")
            case .topologyRefreshFailed(let error): Console.error("\(name): fetching the cluster map failed: \(error)")
            }
        }
    }
}

/// Logs a stream consumer's or reader's events on standard error: claims, dead letters, losses (with their count),
/// `NOGROUP`, failures and reconnects.
public func logStreamEvents<Event: CustomStringConvertible & Sendable>(_ events: AsyncStream<Event>, name: String) -> Task<Void, Never> {
    Task {
        for await event in events { Console.error("\(name): \(event)") }
    }
}

/// Writes a subscription's gaps to standard error ("deaf since ...", "recovered after ...").
public func logSubscriptionEvents(_ events: AsyncStream<SubscriptionEvent>, name: String) -> Task<Void, Never> {
    Task {
        for await event in events {
            switch event {
            case .disconnected(_, let cause): Console.error("\(name): subscription interrupted: \(cause)")
            case .resubscribed(_, let gap): Console.error("\(name): subscription recovered after a gap of \(gap)")
            case .subscribed: break
            }
        }
    }
}

/// A logger for the service group: warnings and worse, on standard error (standard output is the demo's).
public func serviceLogger(_ label: String) -> Logger {
    var logger = Logger(label: label, factory: { StreamLogHandler.standardError(label: $0) })
    logger.logLevel = .warning
    return logger
}

/// Runs the connection and the worker as a service group until the worker finishes (then the connection closes
/// gracefully) or SIGINT/SIGTERM shuts both down gracefully. Returns whether everything ended cleanly.
public func runServices(connection: some Service, worker: some Service, name: String) async -> Bool {
    let group = ServiceGroup(
        configuration: ServiceGroupConfiguration(
            services: [
                .init(service: connection),
                .init(service: worker, successTerminationBehavior: .gracefullyShutdownGroup),
            ],
            gracefulShutdownSignals: [.sigterm, .sigint],
            logger: serviceLogger(name)
        ))
    do {
        try await group.run()
        return true
    } catch {
        Console.error("error: \(error)")
        return false
    }
}
