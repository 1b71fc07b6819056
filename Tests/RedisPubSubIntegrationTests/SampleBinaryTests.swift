import Foundation
import RedisPubSub
import Testing

/// One run of a sample binary with its output collected.
final class SampleProcess: @unchecked Sendable {
    // @unchecked Sendable because: `stdoutText` and `stderrText` are only touched under `lock`.
    let process = Process()
    private let lock = NSLock()
    private var stdoutText = ""
    private var stderrText = ""
    /// The exit status, once reaped (a reaped child cannot be asked again).
    private var reapedStatus: Int32?

    init(_ name: String, _ arguments: [String], environment extra: [String: String] = [:]) throws {
        let binary = URL(fileURLWithPath: CommandLine.arguments[0]).deletingLastPathComponent().appendingPathComponent(name)
        guard FileManager.default.isExecutableFile(atPath: binary.path) else {
            throw RedisError(.invalidConfiguration, "\(binary.path) is missing: build with `swift build --build-tests`")
        }
        process.executableURL = binary
        process.arguments = arguments
        var environment = ProcessInfo.processInfo.environment
        environment["REDIS_URL"] = nil
        environment.merge(extra) { $1 }
        process.environment = environment
        let out = Pipe(), err = Pipe()
        process.standardOutput = out
        process.standardError = err
        out.fileHandleForReading.readabilityHandler = { [weak self] handle in
            let data = handle.availableData
            guard let self, !data.isEmpty else { return }
            self.lock.lock(); self.stdoutText += String(decoding: data, as: UTF8.self); self.lock.unlock()
        }
        err.fileHandleForReading.readabilityHandler = { [weak self] handle in
            let data = handle.availableData
            guard let self, !data.isEmpty else { return }
            self.lock.lock(); self.stderrText += String(decoding: data, as: UTF8.self); self.lock.unlock()
        }
        try process.run()
    }

    var stdout: String { lock.lock(); defer { lock.unlock() }; return stdoutText }
    var stderr: String { lock.lock(); defer { lock.unlock() }; return stderrText }
    var stdoutLines: [String] { stdout.split(separator: "\n").map(String.init) }

    /// Waits up to `timeout` for the process to exit; kills it and returns nil if it does not.
    func exitStatus(within timeout: Duration = .seconds(20)) async -> Int32? {
        if let reaped = lock.withLock({ reapedStatus }) { return reaped }
        guard let status = await process.waitForExit(timeout: timeout) else {
            kill(process.processIdentifier, SIGKILL)
            let killed = await process.waitForExit()
            lock.withLock { reapedStatus = killed }
            return nil
        }
        lock.withLock { reapedStatus = status }
        try? await Task.sleep(for: .milliseconds(50))  // let the pipes drain
        return status
    }

    func signal(_ number: Int32) { kill(process.processIdentifier, number) }
}

@Suite("Sample binaries: subscriber and publisher")
struct SampleBinaryTests {
    static let time = #"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ"#

    @Test func subscriberAndPublisherPrintTheDocumentedLines() async throws {
        let server = try RedisServer.start()
        defer { server.stop() }
        let subscriber = try SampleProcess("subscriber", ["--url", server.url, "--count", "3"])
        try await waitUntil { subscriber.stdout.contains("\n") }
        #expect(subscriber.stdoutLines.first == "Subscribed to notifications")
        let publisher = try SampleProcess("publisher", ["--url", server.url, "--count", "3", "--interval", "0.1"])
        #expect(await publisher.exitStatus() == 0)
        #expect(await subscriber.exitStatus() == 0)
        let published = publisher.stdoutLines
        #expect(published.count == 3)
        for line in published {
            #expect(line.wholeMatch(of: try Regex(#"Published to notifications \(1 receiver\): Hello at "# + Self.time)) != nil, "\(line)")
        }
        let received = Array(subscriber.stdoutLines.dropFirst())
        #expect(received.count == 3)
        for line in received {
            #expect(line.wholeMatch(of: try Regex("Received message on notifications: Hello at " + Self.time)) != nil, "\(line)")
        }
        // Same payloads, same order.
        #expect(received.map { $0.split(separator: ": ", maxSplits: 1).last } == published.map { $0.split(separator: ": ", maxSplits: 1).last })
    }

    @Test func overMutualTLSWithTheTLSFlagsTheyPrintTheSameLines() async throws {
        let (server, tlsPort) = try RedisServer.startTLS(clientCertificates: "yes")
        defer { server.stop() }
        let certificates = TestCertificates.shared
        let url = "rediss://localhost:\(tlsPort)"
        let tls = ["--tls-ca-file", certificates.ca, "--tls-cert-file", certificates.clientCertificate,
                   "--tls-key-file", certificates.clientKey]
        let subscriber = try SampleProcess("subscriber", ["--url", url, "--count", "2"] + tls)
        try await waitUntil { subscriber.stdout.contains("\n") }
        #expect(subscriber.stdoutLines.first == "Subscribed to notifications")
        let publisher = try SampleProcess("publisher", ["--count", "2", "--interval", "0.1"] + tls, environment: ["REDIS_URL": url])
        #expect(await publisher.exitStatus() == 0)
        #expect(await subscriber.exitStatus() == 0)
        for line in publisher.stdoutLines {
            #expect(line.wholeMatch(of: try Regex(#"Published to notifications \(1 receiver\): Hello at "# + Self.time)) != nil, "\(line)")
        }
        #expect(Array(subscriber.stdoutLines.dropFirst()).count == 2)
        for line in subscriber.stdoutLines.dropFirst() {
            #expect(line.wholeMatch(of: try Regex("Received message on notifications: Hello at " + Self.time)) != nil, "\(line)")
        }

        // Without the client certificate: one clear line and exit 1 at once, not a retry loop.
        let refused = try SampleProcess("subscriber", ["--url", url, "--tls-ca-file", certificates.ca])
        #expect(await refused.exitStatus(within: .seconds(8)) == 1)
        #expect(refused.stderr.contains("requires a client certificate"), "\(refused.stderr)")
        // TLS options with a URL without TLS are a mistake, not silently plaintext.
        let plain = try SampleProcess("publisher", ["--url", server.url, "--count", "1"] + tls)
        #expect(await plain.exitStatus() == 1)
        #expect(plain.stderr.contains("need a rediss:// URL"), "\(plain.stderr)")
    }

    /// docker-compose.tls.yml cannot run here (no Docker engine): its pieces are run instead. The certificate script
    /// it runs, redis-server with its TLS options, its health check's redis-cli and the binaries with its flags.
    @Test func theComposeTLSVariantsPiecesWorkTogether() async throws {
        let root = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()
        let compose = try String(contentsOf: root.appendingPathComponent("docker-compose.tls.yml"), encoding: .utf8)
        let directory = FileManager.default.temporaryDirectory.appendingPathComponent("compose-tls-\(UUID().uuidString)")
        defer { try? FileManager.default.removeItem(at: directory) }
        let script = Process()
        script.executableURL = root.appendingPathComponent("scripts/make-test-certs.sh")
        script.arguments = [directory.path, "localhost"]
        script.standardOutput = FileHandle.nullDevice
        try script.run()
        #expect(await script.waitForExit() == 0)
        func file(_ name: String) -> String {
            #expect(compose.contains("/certs/\(name)"), "docker-compose.tls.yml no longer uses /certs/\(name)")
            return directory.appendingPathComponent(name).path
        }
        for option in ["--tls-cert-file", "--tls-key-file", "--tls-ca-cert-file", "--tls-auth-clients", "--tls-ca-file", "rediss://redis:6379"] {
            #expect(compose.contains(option), "docker-compose.tls.yml no longer has \(option)")
        }
        let (server, tlsPort) = try RedisServer.startTLS(
            clientCertificates: "yes", certificate: file("server.crt"),
            ["--tls-key-file", file("server.key"), "--tls-ca-cert-file", file("ca.crt")])
        defer { server.stop() }

        let ping = Process()
        ping.executableURL = try RedisServer.find("redis-cli")
        ping.arguments = ["--tls", "--cacert", file("ca.crt"), "--cert", file("client.crt"), "--key", file("client.key"),
                          "-p", "\(tlsPort)", "ping"]
        let output = Pipe()
        ping.standardOutput = output
        try ping.run()
        await ping.waitForExit()
        #expect(String(decoding: output.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self).contains("PONG"))

        let tls = ["--tls-ca-file", file("ca.crt"), "--tls-cert-file", file("client.crt"), "--tls-key-file", file("client.key")]
        let environment = ["REDIS_URL": "rediss://localhost:\(tlsPort)"]
        let subscriber = try SampleProcess("subscriber", ["--count", "1"] + tls, environment: environment)
        try await waitUntil { subscriber.stdout.contains("\n") }
        let publisher = try SampleProcess("publisher", ["--count", "1"] + tls, environment: environment)
        #expect(await publisher.exitStatus() == 0)
        #expect(await subscriber.exitStatus() == 0)
        #expect(subscriber.stdoutLines.last?.hasPrefix("Received message on notifications: Hello at ") == true, "\(subscriber.stderr)")
    }

    @Test func channelsPatternsAndMessageText() async throws {
        let server = try RedisServer.start()
        defer { server.stop() }
        let subscriber = try SampleProcess("subscriber", ["--url", server.url, "--channel", "alpha", "--channel", "beta", "--pattern", "news.*", "--count", "3"])
        try await waitUntil { subscriber.stdout.contains("\n") }
        #expect(subscriber.stdoutLines.first == "Subscribed to alpha, beta, news.*")
        for channel in ["alpha", "beta", "news.sport"] {
            let publisher = try SampleProcess("publisher", ["--url", server.url, "--channel", channel, "--count", "1", "--message", "hi \(channel)"])
            #expect(await publisher.exitStatus() == 0)
            #expect(publisher.stdoutLines == ["Published to \(channel) (1 receiver): hi \(channel)"])
        }
        #expect(await subscriber.exitStatus() == 0)
        #expect(Array(subscriber.stdoutLines.dropFirst()) == [
            "Received message on alpha: hi alpha",
            "Received message on beta: hi beta",
            "Received message on news.sport (pattern news.*): hi news.sport",
        ])
    }

    @Test func jsonModeSkipsABadPayloadWithOneErrorLine() async throws {
        let server = try RedisServer.start()
        defer { server.stop() }
        let subscriber = try SampleProcess("subscriber", ["--url", server.url, "--json", "--count", "2"])
        try await waitUntil { subscriber.stdout.contains("\n") }
        let first = try SampleProcess("publisher", ["--url", server.url, "--json", "--count", "1", "--message", "first"])
        #expect(await first.exitStatus() == 0)
        #expect(first.stdoutLines.first?.contains(#""text":"first""#) == true)
        let connection = try await RedisConnection.connect(to: .init(url: server.url))
        try await connection.publish("this is not JSON", to: "notifications")
        try await connection.publish(#"{"id": 5}"#, to: "notifications")
        await connection.close()
        let second = try SampleProcess("publisher", ["--url", server.url, "--json", "--count", "1", "--message", "second"])
        #expect(await second.exitStatus() == 0)
        #expect(await subscriber.exitStatus() == 0)
        #expect(Array(subscriber.stdoutLines.dropFirst()) == [
            "Received notification #1 on notifications: first",
            "Received notification #1 on notifications: second",
        ])
        let errors = subscriber.stderr.split(separator: "\n")
        #expect(errors.count == 2)
        #expect(errors.allSatisfy { $0.hasPrefix("Skipped a message on notifications: not a notification") })
    }

    @Test(arguments: [SIGTERM, SIGINT])
    func signalsExitCleanly(signal: Int32) async throws {
        let server = try RedisServer.start()
        defer { server.stop() }
        let subscriber = try SampleProcess("subscriber", ["--url", server.url])
        let publisher = try SampleProcess("publisher", ["--url", server.url, "--interval", "0.2"])
        try await waitUntil { subscriber.stdoutLines.count >= 2 && publisher.stdoutLines.count >= 1 }
        subscriber.signal(signal)
        publisher.signal(signal)
        #expect(await subscriber.exitStatus() == 0)
        #expect(await publisher.exitStatus() == 0)
        let connection = try await RedisConnection.connect(to: .init(url: server.url))
        #expect(try await connection.pubsubNumberOfSubscribers(["notifications"]) == ["notifications": 0])
        await connection.close()
    }

    @Test func connectTimeoutWithoutAServerExitsOneWithAClearMessage() async throws {
        let refusing = try RefusingPort()
        defer { withExtendedLifetime(refusing) {} }  // held to the end: nobody else can take the port meanwhile
        let port = refusing.port
        let started = ContinuousClock.now
        let subscriber = try SampleProcess("subscriber", ["--url", "redis://127.0.0.1:\(port)", "--connect-timeout", "1"])
        #expect(await subscriber.exitStatus() == 1)
        #expect(ContinuousClock.now - started < .seconds(30))  // it gives up (a loaded sanitizer run took 10.5 s)
        #expect(subscriber.stderr.contains("cannot connect to redis://127.0.0.1:\(port) within 1.0 s"))
        #expect(subscriber.stderr.contains("Connection refused"))
    }

    @Test func startedBeforeTheServerTheyWaitForIt() async throws {
        let port = try RedisServer.freePort()
        let subscriber = try SampleProcess("subscriber", ["--url", "redis://127.0.0.1:\(port)", "--count", "1"])
        try await Task.sleep(for: .milliseconds(700))
        let server = try RedisServer.start(port: port)
        defer { server.stop() }
        try await waitUntil { subscriber.stdout.contains("Subscribed to notifications") }
        let publisher = try SampleProcess("publisher", ["--url", server.url, "--count", "1"])
        #expect(await publisher.exitStatus() == 0)
        #expect(await subscriber.exitStatus() == 0)
    }

    @Test func helpDocumentsEveryOption() async throws {
        let subscriber = try SampleProcess("subscriber", ["--help"])
        #expect(await subscriber.exitStatus() == 0)
        for option in ["--url", "--connect-timeout", "--channel", "--pattern", "--json", "--count", "REDIS_URL", "rediss://",
                       "--tls-ca-file", "--tls-cert-file", "--tls-key-file", "--stream", "--group", "--consumer", "--work",
                       "--claim-idle", "--max-deliveries", "--dead-letter"] {
            #expect(subscriber.stdout.contains(option), "subscriber --help lacks \(option)")
        }
        let publisher = try SampleProcess("publisher", ["--help"])
        #expect(await publisher.exitStatus() == 0)
        for option in ["--url", "--connect-timeout", "--channel", "--interval", "--count", "--message", "--json", "REDIS_URL",
                       "rediss://", "--tls-ca-file", "--tls-cert-file", "--tls-key-file", "--stream"] {
            #expect(publisher.stdout.contains(option), "publisher --help lacks \(option)")
        }
    }

    @Test(arguments: ["redis:/:hunter2@h", ":hunter2@h:6379", "redis://h?password=hunter2", "redis://:hunter2", "hunter2"])
    func aMalformedURLNeverShowsItsPassword(url: String) async throws {
        let flag = try SampleProcess("subscriber", ["--url", url, "--connect-timeout", "1"])
        let environment = try SampleProcess("publisher", ["--connect-timeout", "1"], environment: ["REDIS_URL": url])
        for process in [flag, environment] {
            #expect(await process.exitStatus() == 1)
            #expect(process.stderr.contains("error:"))
            #expect(!process.stderr.contains("hunter2") && !process.stdout.contains("hunter2"), "\(process.stderr)")
        }
    }

    @Test func badArgumentsAreRejected() async throws {
        let bad = try SampleProcess("publisher", ["--count", "0"])
        #expect(await bad.exitStatus() != 0)
        #expect(bad.stderr.contains("--count must be at least 1"))
        let badURL = try SampleProcess("subscriber", ["--url", "redis://host:99999"])
        #expect(await badURL.exitStatus() == 1)
        #expect(badURL.stderr.contains("out of range"))
    }
}

@Suite("Sample binaries notice a frozen server")
struct SampleBinaryFreezeTests {
    @Test func thePublishersHealthCheckIntervalDetectsAFrozenServer() async throws {
        let server = try RedisServer.start()
        defer { server.stop() }
        // One message, then a minute of idling: only the health check can notice the freeze.
        let publisher = try SampleProcess(
            "publisher", ["--url", server.url, "--interval", "60", "--health-check-interval", "0.3", "--message", "tick"])
        try await waitUntil { publisher.stdoutLines.count >= 1 }
        server.pause()
        try await waitUntil { publisher.stderr.contains("publisher: disconnected") }
        #expect(publisher.stderr.contains("health check"), "\(publisher.stderr)")
        server.resume()
        try await waitUntil { publisher.stderr.contains("publisher: reconnected") }
        publisher.signal(SIGTERM)
        #expect(await publisher.exitStatus() == 0)
    }
}

@Suite("Sample binaries survive a server restart")
struct SampleBinaryRestartTests {
    @Test func subscriberAndPublisherKeepGoingThroughARestart() async throws {
        var server = try RedisServer.start()
        let port = server.port
        let subscriber = try SampleProcess("subscriber", ["--url", server.url, "--health-check-interval", "1"])
        try await waitUntil { subscriber.stdout.contains("Subscribed to notifications") }
        let publisher = try SampleProcess("publisher", ["--url", server.url, "--interval", "0.1", "--message", "tick"])
        try await waitUntil { subscriber.stdoutLines.count >= 3 }
        server.stop()
        try await Task.sleep(for: .milliseconds(300))
        server = try RedisServer.start(port: port)
        defer { server.stop() }
        let before = subscriber.stdoutLines.count
        try await waitUntil { subscriber.stdoutLines.count >= before + 3 }  // messages flow again, same processes
        #expect(subscriber.stderr.contains("subscriber: disconnected"))
        #expect(subscriber.stderr.contains("subscriber: reconnected"))
        #expect(publisher.stderr.contains("publisher: disconnected"))
        #expect(publisher.stderr.contains("publisher: reconnected"))
        subscriber.signal(SIGTERM)
        publisher.signal(SIGTERM)
        #expect(await subscriber.exitStatus() == 0)
        #expect(await publisher.exitStatus() == 0)
    }
}
