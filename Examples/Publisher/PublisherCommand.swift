import ArgumentParser
import DemoSupport
import Foundation
import RedisPubSub

@main
struct PublisherCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "publisher",
        abstract: "Publishes \"Hello at <time>\" to a Redis channel every few seconds (the notifications demo's sending side).",
        discussion: "Prints one line per message with its payload and the number of subscribers that received it. SIGINT and SIGTERM exit 0."
    )

    @Option(help: "Redis URL. Default: the REDIS_URL environment variable, else redis://127.0.0.1:6379.")
    var url: String?

    @Option(name: .customLong("connect-timeout"), help: "Seconds to keep trying to reach the server at start-up.")
    var connectTimeout: Double = 10

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

    func validate() throws {
        if let count, count < 1 { throw ValidationError("--count must be at least 1") }
        if interval < 0 { throw ValidationError("--interval must not be negative") }
        if connectTimeout <= 0 { throw ValidationError("--connect-timeout must be positive") }
    }

    func run() async throws {
        let publisher = await connectWithRetry(DemoSupport.configuration(url: url), timeout: connectTimeout) {
            try await Publisher.connect(to: $0, encoder: Notification.encoder)
        }
        let work = Task {
            var sent = 0
            while !Task.isCancelled {
                sent += 1
                let now = Date()
                let text = message ?? "Hello at \(now.ISO8601Format())"
                let payload: String
                let receivers: Int
                if json {
                    let notification = Notification(id: sent, text: text, sentAt: now)
                    payload = String(decoding: try Notification.encoder.encode(notification), as: UTF8.self)
                    receivers = try await publisher.publish(notification, to: channel)
                } else {
                    payload = text
                    receivers = try await publisher.publish(text, to: channel)
                }
                Console.out("Published to \(channel) (\(receivers) \(receivers == 1 ? "receiver" : "receivers")): \(payload)")
                if let count, sent >= count { return }
                try await Task.sleep(for: .milliseconds(Int(interval * 1000)))
            }
        }
        let signals = ShutdownSignals { work.cancel() }
        do {
            try await work.value
        } catch is CancellationError {
            // SIGINT or SIGTERM: a clean stop.
        } catch {
            Console.error("error: \(error)")
            await publisher.close()
            throw ExitCode(1)
        }
        _ = signals
        await publisher.close()
    }
}
