import Foundation
import RedisPubSub
import Testing

@Suite("Connecting: addresses, credentials and their failures")
struct ConnectTests {
    /// A configuration that gives up quickly: start-up retries last for the connect timeout.
    static func quick(_ url: String) throws -> RedisConfiguration {
        var configuration = try RedisConfiguration(url: url)
        configuration.connectTimeout = .milliseconds(500)
        return configuration
    }

    @Test func refusedPortIsConnectionRefused() async throws {
        let refusing = try RefusingPort()
        defer { withExtendedLifetime(refusing) {} }  // held to the end: nobody else can take the port meanwhile
        let port = refusing.port
        await #expect {
            _ = try await RedisConnection.connect(to: Self.quick("redis://127.0.0.1:\(port)"))
        } throws: { error in
            isRedisError(error, .connectionRefused) && "\(error)".contains("127.0.0.1:\(port)")
        }
    }

    @Test func aServerAbsentAtStartIsWaitedForWithinTheConnectTimeout() async throws {
        let port = try RedisServer.freePort()
        var configuration = try RedisConfiguration(url: "redis://127.0.0.1:\(port)")
        configuration.connectTimeout = .seconds(10)
        let connecting = Task { try await RedisConnection.connect(to: configuration) }
        let subscribing = Task { try await Subscriber.connect(to: configuration) }
        try await Task.sleep(for: .milliseconds(500))
        let server = try RedisServer.start(port: port)
        defer { server.stop() }
        let connection = try await connecting.value
        let subscriber = try await subscribing.value
        #expect(try await connection.ping() == "PONG")
        let subscription = try await subscriber.subscribe(to: "late")
        #expect(try await connection.publish("hi", to: "late") == 1)
        #expect(try await collect(subscription, 1).map(\.string) == ["hi"])
        await connection.close()
        await subscriber.close()
    }

    @Test func missingUnixSocketIsConnectionRefused() async throws {
        await #expect {
            _ = try await RedisConnection.connect(to: Self.quick("unix:///nonexistent/redis-\(UUID().uuidString).sock"))
        } throws: { isRedisError($0, .connectionRefused) }
    }

    @Test func unresolvableHostIsNameResolutionFailure() async throws {
        // `.invalid` is reserved (RFC 6761): no resolver may answer it.
        await #expect {
            var configuration = try RedisConfiguration(url: "redis://no-such-host-\(UUID().uuidString.prefix(8)).invalid:6379")
            configuration.connectTimeout = .seconds(3)  // resolvers can be slow to say no
            _ = try await RedisConnection.connect(to: configuration)
        } throws: { isRedisError($0, .nameResolutionFailed) }
    }

    @Test func localhostNameResolvesAndConnects() async throws {
        let server = try RedisServer.start()
        defer { server.stop() }
        // "localhost" may resolve to ::1 first, where the server does not listen: the next address is tried.
        let connection = try await RedisConnection.connect(to: .init(url: "redis://localhost:\(server.port)"))
        #expect(try await connection.ping() == "PONG")
        await connection.close()
    }

    @Test func passwordAuthentication() async throws {
        let server = try RedisServer.start(["--requirepass", "right-password"])
        defer { server.stop() }
        let good = try await RedisConnection.connect(to: .init(url: "redis://:right-password@127.0.0.1:\(server.port)"))
        #expect(try await good.ping() == "PONG")
        await good.close()

        await #expect {
            _ = try await RedisConnection.connect(to: .init(url: "redis://:wrong-password@127.0.0.1:\(server.port)"))
        } throws: { error in
            isRedisError(error, .authenticationFailed) && !"\(error)".contains("wrong-password")
        }
        await #expect {
            _ = try await RedisConnection.connect(to: .init(url: server.url))
        } throws: { isRedisError($0, .authenticationFailed) }
    }

    @Test func aclUsers() async throws {
        let server = try RedisServer.start()
        defer { server.stop() }
        let admin = try await RedisConnection.connect(to: .init(url: server.url))
        try await admin.send("ACL", "SETUSER", "limited", "on", ">limited-pw", "~allowed:*", "-@all", "+ping", "+get", "+set")
        let limited = try await RedisConnection.connect(to: .init(url: "redis://limited:limited-pw@127.0.0.1:\(server.port)"))
        #expect(try await limited.ping() == "PONG")
        try await limited.send("SET", "allowed:1", "yes")
        // A command the user may not run, and a key it may not touch: permission errors, connection intact.
        await #expect { try await limited.send("FLUSHALL") } throws: { isRedisError($0, .permissionDenied) }
        await #expect { try await limited.send("GET", "secret") } throws: { isRedisError($0, .permissionDenied) }
        await #expect { try await limited.publish("x", to: "news") } throws: { isRedisError($0, .permissionDenied) }
        #expect(try await limited.send("GET", "allowed:1").string == "yes")

        await #expect {
            _ = try await RedisConnection.connect(to: .init(url: "redis://limited:not-it@127.0.0.1:\(server.port)"))
        } throws: { isRedisError($0, .authenticationFailed) }
        await #expect {
            _ = try await RedisConnection.connect(to: .init(url: "redis://nobody:pw@127.0.0.1:\(server.port)"))
        } throws: { isRedisError($0, .authenticationFailed) }
        await limited.close()
        await admin.close()
    }

    @Test func databaseOutOfRangeIsAConfigurationError() async throws {
        let server = try RedisServer.start(["--databases", "4"])
        defer { server.stop() }
        await #expect {
            _ = try await RedisConnection.connect(to: .init(url: server.url + "/9"))
        } throws: { error in
            isRedisError(error, .invalidConfiguration) && "\(error)".contains("SELECT")
        }
    }

    @Test func connectTimesOutAgainstAFrozenServer() async throws {
        let server = try RedisServer.start()
        defer { server.stop() }
        server.pause()  // the kernel still accepts the TCP connection; the handshake gets no answer
        var configuration = try RedisConfiguration(url: server.url)
        configuration.connectTimeout = .milliseconds(300)
        let time = await elapsed {
            await #expect { _ = try await RedisConnection.connect(to: configuration) } throws: { isRedisError($0, .timeout) }
        }
        #expect(time < .seconds(10))  // 0.3 s and its retries; a sanitizer run on a loaded machine took 5.2 s
        server.resume()
    }

    @Test func cancellingAConnectReturnsPromptly() async throws {
        let server = try RedisServer.start()
        defer { server.stop() }
        server.pause()
        var configuration = try RedisConfiguration(url: server.url)
        configuration.connectTimeout = .seconds(30)
        let task = Task { try await RedisConnection.connect(to: configuration) }
        try await Task.sleep(for: .milliseconds(100))
        let time = await elapsed {
            task.cancel()
            await #expect(throws: RedisError(.cancelled, "the task was cancelled")) { _ = try await task.value }
        }
        #expect(time < .seconds(10))  // cancelled, not the 30 s connect timeout
        server.resume()
    }

    @Test func maxClientsReachedIsAServerErrorAtConnect() async throws {
        let server = try RedisServer.start(["--maxclients", "1"])
        defer { server.stop() }
        // The start-up probe's connection may still hold the one slot for a moment.
        var first: RedisConnection?
        for _ in 0..<50 where first == nil {
            first = try? await RedisConnection.connect(to: .init(url: server.url))
            if first == nil { try await Task.sleep(for: .milliseconds(20)) }
        }
        var configuration = try RedisConfiguration(url: server.url)
        configuration.connectTimeout = .seconds(2)  // several attempts even on a loaded machine
        await #expect {
            _ = try await RedisConnection.connect(to: configuration)  // retried until the timeout, then the cause
        } throws: { error in
            guard let error = error as? RedisError else { return false }
            return error.code == .serverError && error.message.contains("max number of clients")
        }
        await first?.close()
    }
}
