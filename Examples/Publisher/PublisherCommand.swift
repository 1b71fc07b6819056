import ArgumentParser
import DemoSupport
import Foundation
import RedisPubSub
import ServiceLifecycle

@main
struct PublisherCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "publisher",
        abstract: "Publishes \"Hello at <time>\" to a Redis channel every few seconds (the notifications demo's sending side).",
        discussion: """
            Prints one line per message with its payload and the number of subscribers that received it. A lost \
            connection is re-established (a message that cannot be sent meanwhile is reported and skipped); each \
            disconnect and recovery is logged on standard error. With --cluster, the URL names a seed node of a Redis \
            Cluster: each message goes to the primary serving the channel's slot (with --shard) or to any node, and \
            map changes are logged on standard error. SIGINT and SIGTERM exit 0.
            """
    )

    @Option(help: "Redis URL: redis://, rediss:// (TLS) or unix://. Default: the REDIS_URL environment variable, else redis://127.0.0.1:6379.")
    var url: String?

    @OptionGroup(title: "TLS")
    var tls: TLSOptions

    @Option(name: .customLong("connect-timeout"), help: "Seconds to keep trying to reach the server at start-up.")
    var connectTimeout: Double = 10

    @Option(name: .customLong("health-check-interval"), help: "Seconds of silence before a PING checks the connection (0: never); a frozen server is noticed and the connection replaced.")
    var healthCheckInterval: Double = 5

    @Option(help: "The channel to publish to.")
    var channel = "notifications"

    @Option(help: "Seconds between messages.")
    var interval: Double = 5

    @Option(help: "Exit 0 after this many messages. Default: publish until stopped.")
    var count: Int?

    @Option(help: "The text to publish. Default: \"Hello at <ISO-8601 time>\".")
    var message: String?

    @Flag(help: "Publish notification JSON {\"id\", \"text\", \"sentAt\"} instead of plain text.")
    var json = false

    @Flag(help: "Publish to --channel as a sharded channel (SPUBLISH, Redis 7).")
    var shard = false

    @Flag(help: "The URL names a seed node of a Redis Cluster.")
    var cluster = false

    @Option(help: "Append each message to this Redis Stream (XADD, field payload) instead of publishing it; prints \"Published <id> to <stream>: <payload>\".")
    var stream: String?

    func validate() throws {
        if stream != nil && (cluster || shard) { throw ValidationError("--stream cannot be combined with --cluster or --shard") }
        if let count, count < 1 { throw ValidationError("--count must be at least 1") }
        if interval < 0 { throw ValidationError("--interval must not be negative") }
        if connectTimeout <= 0 { throw ValidationError("--connect-timeout must be positive") }
        if healthCheckInterval < 0 { throw ValidationError("--health-check-interval must not be negative") }
    }

    func run() async throws {
        let configuration = DemoSupport.configuration(url: url, healthCheckInterval: healthCheckInterval, tls: tls)
        let channel = self.channel
        let shard = self.shard
        if cluster {
            let publisher = await connectWithRetry(configuration, timeout: connectTimeout) {
                try await ClusterPublisher.connect(to: RedisClusterConfiguration(seeds: [$0]), encoder: Notification.encoder)
            }
            let eventLog = logClusterEvents(publisher.events(), name: "publisher")
            let loop = PublishLoop(interval: interval, count: count, message: message, json: json) { (payload: String) async throws(RedisError) -> String in
                let receivers = shard ? try await publisher.publish(payload, toShard: channel) : try await publisher.publish(payload, to: channel)
                return PublishLoop.publishedLine(channel: channel, receivers: receivers, payload: payload)
            }
            guard await runServices(connection: publisher, worker: loop, name: "publisher") else { throw ExitCode(1) }
            eventLog.cancel()
        } else {
            let publisher = await connectWithRetry(configuration, timeout: connectTimeout) {
                try await Publisher.connect(to: $0, encoder: Notification.encoder)
            }
            let eventLog = logConnectionEvents(publisher.events(), name: "publisher")
            let stream = self.stream
            let loop = PublishLoop(interval: interval, count: count, message: message, json: json) { (payload: String) async throws(RedisError) -> String in
                if let stream {
                    let id = try await publisher.append(payload, to: stream)
                    return "Published \(id) to \(stream): \(payload)"
                }
                let receivers = shard ? try await publisher.publish(payload, toShard: channel) : try await publisher.publish(payload, to: channel)
                return PublishLoop.publishedLine(channel: channel, receivers: receivers, payload: payload)
            }
            guard await runServices(connection: publisher, worker: loop, name: "publisher") else { throw ExitCode(1) }
            eventLog.cancel()
        }
    }
}

/// Publishes every `interval` seconds; returns after `count` messages, or when the group shuts down.
struct PublishLoop: Service {
    let interval: Double
    let count: Int?
    let message: String?
    let json: Bool
    /// Sends one payload; returns the line to print.
    let publish: @Sendable (String) async throws(RedisError) -> String

    static func publishedLine(channel: String, receivers: Int, payload: String) -> String {
        "Published to \(channel) (\(receivers) \(receivers == 1 ? "receiver" : "receivers")): \(payload)"
    }

    func run() async throws {
        try await cancelWhenGracefulShutdown {
            var sent = 0
            while !Task.isCancelled {
                sent += 1
                let now = Date()
                let text = message ?? "Hello at \(now.ISO8601Format())"
                do {
                    let payload: String
                    if json {
                        let notification = Notification(id: sent, text: text, sentAt: now)
                        payload = String(decoding: try Notification.encoder.encode(notification), as: UTF8.self)
                    } else {
                        payload = text
                    }
                    Console.out(try await publish(payload))
                } catch let error as RedisError where error.code == .connectionClosed || error.code == .timeout {
                    Console.error("publisher: not sent (\(error)); retrying at the next interval")
                    sent -= 1
                } catch is CancellationError {
                    return  // graceful shutdown
                }
                if let count, sent >= count { return }
                do {
                    try await Task.sleep(for: .milliseconds(Int(interval * 1000)))
                } catch {
                    return  // graceful shutdown while waiting
                }
            }
        }
    }
}
