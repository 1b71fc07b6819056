import Testing
@testable import RedisPubSub

/// Drives ``ConnectionStateMachine`` through its transitions without a server, a clock or a socket.
@Suite("ConnectionStateMachine: the connection lifecycle")
struct ConnectionStateMachineTests {
    typealias Machine = ConnectionStateMachine
    typealias Action = ConnectionStateMachine.Action

    let t0 = ContinuousClock.now
    let a = ServerAddress.tcp(ip: "10.0.0.1", port: 6379)
    let b = ServerAddress.tcp(ip: "10.0.0.2", port: 6379)
    let c = ServerAddress.tcp(ip: "10.0.0.3", port: 6379)

    func settings(
        fixed: ServerAddress? = nil,
        connectTimeout: Duration = .seconds(10),
        reconnect: ReconnectPolicy = .default,
        health: HealthCheck? = HealthCheck(interval: .seconds(5), timeout: .seconds(2)),
        handshake: Handshake = Handshake(authenticates: false, database: 0, clientName: nil),
        usesTLS: Bool = false
    ) -> Machine.Settings {
        Machine.Settings(
            endpointDescription: "redis://example:6379", fixedAddress: fixed, connectTimeout: connectTimeout,
            commandTimeout: .seconds(5), reconnect: reconnect, healthCheck: health, handshake: handshake,
            usesTLS: usesTLS)
    }

    /// A machine connected through `address` at `t0`.
    func ready(_ machine: inout Machine, address: ServerAddress? = nil) {
        _ = machine.start(now: t0)
        if machine.settings.fixedAddress == nil { _ = machine.resolved(.success([address ?? a]), attempt: 1, now: t0) }
        _ = machine.socketConnected(now: t0)
        for _ in machine.settings.handshake.steps { _ = machine.handshakeReply(.simpleString("OK"), now: t0) }
        #expect(machine.isReady)
    }

    func opened(_ actions: [Action]) -> [ServerAddress] {
        actions.compactMap { if case .open(let address) = $0 { address } else { nil } }
    }

    func finished(_ actions: [Action]) -> RedisError?? {
        for action in actions { if case .finish(let error) = action { return .some(error) } }
        return nil
    }

    func retries(_ actions: [Action]) -> Bool {
        actions.contains { if case .schedule(.retry, _) = $0 { true } else { false } }
    }

    func lost(_ actions: [Action]) -> RedisError? {
        for action in actions { if case .connectionLost(let error) = action { return error } }
        return nil
    }

    func scheduled(_ timer: Machine.Timer, in actions: [Action]) -> ContinuousClock.Instant? {
        for action in actions { if case .schedule(timer, let at) = action { return at } }
        return nil
    }

    // MARK: Connecting

    @Test func aFixedAddressIsOpenedAtOnceWithTheWholeAttempt() {
        var machine = Machine(settings: settings(fixed: a), seed: 1)
        let actions = machine.start(now: t0)
        #expect(actions == [.schedule(.attempt, at: t0 + .seconds(10)), .cancel(.address), .open(a)])
    }

    @Test func aHostNameIsResolvedAndEachAddressGetsAnEqualShareOfWhatIsLeft() {
        var machine = Machine(settings: settings(), seed: 1)
        #expect(machine.start(now: t0) == [.schedule(.attempt, at: t0 + .seconds(10)), .resolve(attempt: 1)])
        let first = machine.resolved(.success([a, b]), attempt: 1, now: t0 + .seconds(2))
        #expect(first == [.schedule(.address, at: t0 + .seconds(6)), .open(a)])
        // The first address never answers: at the end of its share, the second gets all that is left.
        let second = machine.timerFired(.address, now: t0 + .seconds(6), lastRead: t0)
        #expect(opened(second) == [b])
        #expect(second.contains(.cancel(.address)))
        #expect(second.contains { if case .closeSocket(let error) = $0 { error.code == .timeout } else { false } })
    }

    @Test func aRefusedAddressMovesOnToTheNextAtOnce() {
        var machine = Machine(settings: settings(), seed: 1)
        _ = machine.start(now: t0)
        _ = machine.resolved(.success([a, b, c]), attempt: 1, now: t0)
        #expect(opened(machine.socketClosed(RedisError(.connectionRefused, "refused"), now: t0)) == [b])
        #expect(opened(machine.openFailed(RedisError(.hostUnreachable, "unreachable"), now: t0)) == [c])
        // The last one fails too: the attempt fails with the last address's error, and is retried.
        let actions = machine.socketClosed(RedisError(.connectionRefused, "refused by c"), now: t0)
        #expect(retries(actions))
        #expect(actions.contains(.reconnecting(attempt: 2, delay: actions.retryDelay(from: t0), lastError: RedisError(.connectionRefused, "refused by c"))))
    }

    @Test func aLateOrDuplicateResolutionIsIgnored() {
        var machine = Machine(settings: settings(connectTimeout: .seconds(1)), seed: 1)
        _ = machine.start(now: t0)
        _ = machine.resolved(.success([a]), attempt: 1, now: t0)
        _ = machine.socketConnected(now: t0)
        _ = machine.handshakeReply(.simpleString("PONG"), now: t0)
        // Lost; attempt 2 resolves too slowly and times out; attempt 3 starts.
        var actions = machine.socketClosed(RedisError(.connectionClosed, "gone"), now: t0)
        actions = machine.timerFired(.retry, now: scheduled(.retry, in: actions)!, lastRead: t0)
        #expect(actions.contains(.resolve(attempt: 2)))
        actions = machine.timerFired(.attempt, now: t0 + .seconds(2), lastRead: t0)
        #expect(retries(actions))
        #expect(machine.resolved(.success([b]), attempt: 2, now: t0 + .seconds(2)) == [])  // attempt 2's late answer
        actions = machine.timerFired(.retry, now: scheduled(.retry, in: actions)!, lastRead: t0)
        #expect(actions.contains(.resolve(attempt: 3)))
        #expect(machine.resolved(.success([b]), attempt: 2, now: t0 + .seconds(2)) == [])  // still attempt 2's
        #expect(opened(machine.resolved(.success([c]), attempt: 3, now: t0 + .seconds(2))) == [c])
        #expect(machine.resolved(.success([a]), attempt: 3, now: t0 + .seconds(2)) == [])  // a duplicate
    }

    @Test func addressesRotateAcrossAttemptsAndTheOneThatWorkedComesFirst() {
        var machine = Machine(settings: settings(), seed: 1)
        _ = machine.start(now: t0)
        _ = machine.resolved(.success([a, b]), attempt: 1, now: t0)
        _ = machine.socketClosed(RedisError(.connectionRefused, "a"), now: t0)
        _ = machine.socketClosed(RedisError(.connectionRefused, "b"), now: t0)  // attempt 1 failed
        _ = machine.timerFired(.retry, now: t0, lastRead: t0)
        #expect(opened(machine.resolved(.success([a, b]), attempt: 2, now: t0)) == [b])  // rotated
        _ = machine.socketConnected(now: t0)
        _ = machine.handshakeReply(.simpleString("PONG"), now: t0)
        #expect(machine.isReady)
        _ = machine.socketClosed(RedisError(.connectionClosed, "gone"), now: t0)
        _ = machine.timerFired(.retry, now: t0, lastRead: t0)
        #expect(opened(machine.resolved(.success([a, b]), attempt: 3, now: t0)) == [b])  // b worked: b first
    }

    @Test func aResolutionFailureIsRetriedUntilTheStartUpTimeIsUpThenReported() {
        var machine = Machine(settings: settings(connectTimeout: .seconds(1)), seed: 7)
        _ = machine.start(now: t0)
        var now = t0
        var actions = machine.resolved(.failure(RedisError(.nameResolutionFailed, "no such host")), attempt: 1, now: now)
        var attempt: UInt64 = 1
        while retries(actions) {
            now = scheduled(.retry, in: actions)!
            actions = machine.timerFired(.retry, now: now, lastRead: t0)
            attempt += 1
            #expect(actions.contains(.resolve(attempt: attempt)))
            actions = machine.resolved(.failure(RedisError(.nameResolutionFailed, "no such host")), attempt: attempt, now: now)
        }
        #expect(finished(actions) == .some(RedisError(.nameResolutionFailed, "no such host")))
        #expect(now < t0 + .seconds(1))
        #expect(machine.isClosed)
    }

    @Test func anAttemptCutShortByTheClockReportsTheFailureBeforeIt() {
        var machine = Machine(settings: settings(fixed: a, connectTimeout: .milliseconds(100), reconnect: ReconnectPolicy(maximumAttempts: 2)), seed: 1)
        _ = machine.start(now: t0)
        var actions = machine.socketClosed(RedisError(.connectionRefused, "refused"), now: t0)
        let retryAt = scheduled(.retry, in: actions)!
        actions = machine.timerFired(.retry, now: retryAt, lastRead: t0)
        actions = machine.timerFired(.attempt, now: retryAt + .milliseconds(100), lastRead: t0)
        #expect(finished(actions) == .some(RedisError(.connectionRefused, "refused")))
    }

    // MARK: The handshake

    let authenticated = Handshake(authenticates: true, database: 2, clientName: "worker")

    func handshaking(_ handshake: Handshake, reconnect: ReconnectPolicy = .default) -> Machine {
        var machine = Machine(settings: settings(fixed: a, reconnect: reconnect, handshake: handshake), seed: 1)
        _ = machine.start(now: t0)
        #expect(machine.socketConnected(now: t0) == [.cancel(.address), .writeHandshake(handshake)])
        #expect(machine.isHandshaking)
        return machine
    }

    @Test func theHandshakeStepsAreWrittenTogetherAndTheLastReplyMakesItReady() {
        #expect(authenticated.steps == [.auth, .select(2), .setName("worker"), .ping])
        var machine = handshaking(authenticated)
        #expect(machine.handshakeReply(.simpleString("OK"), now: t0) == [])
        #expect(machine.handshakeReply(.simpleString("OK"), now: t0) == [])
        #expect(machine.handshakeReply(.simpleString("OK"), now: t0) == [])
        let actions = machine.handshakeReply(.simpleString("PONG"), now: t0 + .seconds(1))
        #expect(actions == [.cancel(.attempt), .ready(downtime: nil), .schedule(.health, at: t0 + .seconds(6))])
        #expect(machine.isReady && machine.acceptsCommands && !machine.isHandshaking)
    }

    @Test func maxClientsReachedAnsweredWhereTheAuthReplyWasExpectedIsRetriedNotAPasswordError() {
        var machine = handshaking(authenticated)
        let actions = machine.handshakeReply(.error("ERR max number of clients reached"), now: t0)
        #expect(finished(actions) == nil)
        #expect(retries(actions))
        #expect(actions.contains { if case .closeSocket = $0 { true } else { false } })
        #expect(machine.currentError == RedisError(.serverError, "ERR max number of clients reached"))
    }

    @Test(arguments: [
        "LOADING Redis is loading the dataset in memory", "BUSY Redis is busy running a script.",
        "MASTERDOWN Link with MASTER is down", "ERR some reason the server gives",
    ])
    func serverConditionsAreRetried(message: String) {
        var machine = handshaking(authenticated)
        #expect(retries(machine.handshakeReply(.error(message), now: t0)))
    }

    @Test(arguments: [
        ("WRONGPASS invalid username-password pair or user is disabled.", RedisError.Code.authenticationFailed),
        ("ERR invalid password", .authenticationFailed),
        ("ERR AUTH <password> called without any password configured for the default user. Are you sure your configuration is correct?", .authenticationFailed),
        ("ERR Client sent AUTH, but no password is set", .authenticationFailed),
        ("ERR wrong number of arguments for 'auth' command", .invalidConfiguration),
    ] as [(String, RedisError.Code)])
    func credentialErrorsEndTheConnection(message: String, code: RedisError.Code) {
        var machine = handshaking(authenticated)
        let actions = machine.handshakeReply(.error(message), now: t0)
        #expect(finished(actions)??.code == code)
        #expect(!retries(actions))
        #expect(machine.isClosed)
    }

    @Test func selectAndClientNameFailuresByTheirText() {
        var outOfRange = handshaking(authenticated)
        _ = outOfRange.handshakeReply(.simpleString("OK"), now: t0)
        let range = outOfRange.handshakeReply(.error("ERR DB index is out of range"), now: t0)
        #expect(finished(range)??.code == .invalidConfiguration)
        #expect(finished(range)??.message.contains("SELECT 2") == true)

        var noSelect = handshaking(authenticated)
        _ = noSelect.handshakeReply(.simpleString("OK"), now: t0)
        #expect(finished(noSelect.handshakeReply(.error("NOPERM this user has no permissions to run the 'select' command"), now: t0))??.code == .permissionDenied)

        // An ACL that forbids CLIENT SETNAME, or a server that renamed CLIENT away: connected anyway, with a warning.
        var noName = handshaking(authenticated)
        _ = noName.handshakeReply(.simpleString("OK"), now: t0)
        _ = noName.handshakeReply(.simpleString("OK"), now: t0)
        let warned = noName.handshakeReply(.error("NOPERM this user has no permissions to run the 'client|setname' command"), now: t0)
        #expect(warned.count == 1 && { if case .warn(let text) = warned[0] { text.contains("client name") } else { false } }())
        #expect(noName.handshakeReply(.simpleString("PONG"), now: t0).contains(.ready(downtime: nil)))
    }

    @Test func anAclUserWithoutPingStillConnects() {
        var machine = handshaking(Handshake(authenticates: true, database: 0, clientName: nil))
        _ = machine.handshakeReply(.simpleString("OK"), now: t0)
        let actions = machine.handshakeReply(.error("NOPERM this user has no permissions to run the 'ping' command"), now: t0)
        #expect(actions.contains(.ready(downtime: nil)))
    }

    @Test func protectedModeIsRefusedNotTakenForConnected() {
        var machine = handshaking(Handshake(authenticates: false, database: 0, clientName: nil))
        let actions = machine.handshakeReply(.error("DENIED Redis is running in protected mode because ..."), now: t0)
        #expect(finished(actions)??.code == .permissionDenied)
        #expect(!actions.contains(.ready(downtime: nil)))
    }

    @Test func anotherErrorToThePingIsRetriedNotTakenForConnected() {
        var machine = handshaking(Handshake(authenticates: false, database: 0, clientName: nil))
        let actions = machine.handshakeReply(.error("ERR something the server says"), now: t0)
        #expect(retries(actions))
        #expect(!actions.contains(.ready(downtime: nil)))
    }

    @Test func noAuthOnThePingIsAMissingPassword() {
        var machine = handshaking(Handshake(authenticates: false, database: 0, clientName: nil))
        #expect(finished(machine.handshakeReply(.error("NOAUTH Authentication required."), now: t0))??.code == .authenticationFailed)
    }

    @Test func aHandshakeWithoutReplyTimesOutNamingTheStep() {
        var machine = handshaking(authenticated, reconnect: .disabled)
        _ = machine.handshakeReply(.simpleString("OK"), now: t0)
        let actions = machine.timerFired(.attempt, now: t0 + .seconds(10), lastRead: t0)
        let error = finished(actions)
        #expect(error??.code == .timeout)
        #expect(error??.message.contains("SELECT 2") == true)
    }

    // MARK: TLS

    @Test func aTLSHandshakeWithoutAnswerTimesOutSayingSoAndAPlainConnectTimeoutDoesNot() {
        var machine = Machine(settings: settings(fixed: a, reconnect: .disabled, usesTLS: true), seed: 1)
        _ = machine.start(now: t0)
        #expect(machine.tlsHandshakeStarted(now: t0) == [])
        #expect(!machine.isHandshaking)  // the Redis handshake starts once TLS is up
        let error = finished(machine.timerFired(.attempt, now: t0 + .seconds(10), lastRead: t0))
        #expect(error??.code == .timeout)
        #expect(error??.message.contains("TLS handshake") == true)
        #expect(error??.message.contains("tls-port") == true)

        var tcpOnly = Machine(settings: settings(fixed: a, reconnect: .disabled, usesTLS: true), seed: 1)
        _ = tcpOnly.start(now: t0)  // the TCP connect itself never completes
        let other = finished(tcpOnly.timerFired(.attempt, now: t0 + .seconds(10), lastRead: t0))
        #expect(other??.message.contains("timed out after") == true)
        #expect(other??.message.contains("TLS") == false)
    }

    @Test func aTLSHandshakeTimingOutOnOneAddressSaysSoAndTheNextAddressStartsFresh() {
        var machine = Machine(settings: settings(reconnect: .disabled, usesTLS: true), seed: 1)
        _ = machine.start(now: t0)
        _ = machine.resolved(.success([a, b]), attempt: 1, now: t0)
        _ = machine.tlsHandshakeStarted(now: t0)
        let actions = machine.timerFired(.address, now: t0 + .seconds(5), lastRead: t0)
        #expect(opened(actions) == [b])
        let error = finished(machine.timerFired(.attempt, now: t0 + .seconds(10), lastRead: t0))
        #expect(error??.message.contains("timed out after") == true)  // b never got as far as TLS
    }

    @Test func aConnectionClosedBeforeAnyHandshakeReplyHintsAtTLSOnlyWithoutTLS() {
        for usesTLS in [false, true] {
            var machine = Machine(settings: settings(fixed: a, reconnect: .disabled, usesTLS: usesTLS), seed: 1)
            _ = machine.start(now: t0)
            _ = machine.socketConnected(now: t0)
            let error = finished(machine.socketClosed(RedisError(.connectionClosed, "connection reset"), now: t0))
            #expect(error??.code == .connectionClosed)
            #expect(error??.message.contains("use rediss://") == !usesTLS)
        }
    }

    // MARK: Lost, reconnecting, giving up

    @Test func aLostConnectionIsRetriedAndTheDowntimeReported() {
        var machine = Machine(settings: settings(fixed: a), seed: 3)
        ready(&machine)
        let cause = RedisError(.connectionClosed, "the server closed the connection")
        let actions = machine.socketClosed(cause, now: t0 + .seconds(1))
        #expect(lost(actions) == cause)
        #expect(actions.first == .cancel(.health))
        let retryAt = scheduled(.retry, in: actions)!
        #expect(retryAt <= t0 + .seconds(1) + .milliseconds(20))  // the first retry waits at most the initial delay
        #expect(actions.contains(.reconnecting(attempt: 1, delay: retryAt - (t0 + .seconds(1)), lastError: cause)))
        #expect(machine.timerFired(.retry, now: retryAt, lastRead: t0).contains(.open(a)))
        _ = machine.socketConnected(now: retryAt)
        let back = machine.handshakeReply(.simpleString("PONG"), now: t0 + .seconds(3))
        #expect(back.contains(.ready(downtime: .seconds(2))))
    }

    @Test func withReconnectingDisabledALostConnectionEnds() {
        var machine = Machine(settings: settings(fixed: a, reconnect: .disabled), seed: 3)
        ready(&machine)
        let cause = RedisError(.connectionClosed, "killed")
        let actions = machine.socketClosed(cause, now: t0)
        #expect(lost(actions) == cause)
        #expect(finished(actions) == .some(cause))
    }

    @Test func aChangedPasswordDuringAReconnectEndsWithoutRetrying() {
        var machine = Machine(settings: settings(fixed: a, handshake: authenticated), seed: 3)
        ready(&machine)
        let again = machine.socketClosed(RedisError(.connectionClosed, "killed"), now: t0)
        _ = machine.timerFired(.retry, now: scheduled(.retry, in: again)!, lastRead: t0)
        _ = machine.socketConnected(now: t0)
        let actions = machine.handshakeReply(.error("WRONGPASS invalid username-password pair"), now: t0)
        #expect(finished(actions)??.code == .authenticationFailed)
    }

    @Test func maximumAttemptsEndsWithTheLastCause() {
        var machine = Machine(settings: settings(fixed: a, reconnect: ReconnectPolicy(maximumAttempts: 2)), seed: 3)
        ready(&machine)
        var actions = machine.socketClosed(RedisError(.connectionClosed, "gone"), now: t0)
        actions = machine.timerFired(.retry, now: scheduled(.retry, in: actions)!, lastRead: t0)
        actions = machine.socketClosed(RedisError(.connectionRefused, "refused 1"), now: t0)
        #expect(retries(actions))
        actions = machine.timerFired(.retry, now: scheduled(.retry, in: actions)!, lastRead: t0)
        actions = machine.socketClosed(RedisError(.connectionRefused, "refused 2"), now: t0)
        #expect(finished(actions) == .some(RedisError(.connectionRefused, "refused 2")))
    }

    @Test func theJitterIsReproducibleFromItsSeed() {
        func delays(seed: UInt64) -> [Duration] {
            var machine = Machine(settings: settings(fixed: a), seed: seed)
            _ = machine.start(now: t0)
            var result: [Duration] = []
            var now = t0
            for _ in 0..<5 {
                let actions = machine.socketClosed(RedisError(.connectionRefused, "refused"), now: now)
                let at = scheduled(.retry, in: actions)!
                result.append(at - now)
                now = at
                _ = machine.timerFired(.retry, now: now, lastRead: t0)
            }
            return result
        }
        #expect(delays(seed: 42) == delays(seed: 42))
        #expect(delays(seed: 42) != delays(seed: 43))
    }

    @Test func timersOfAStateAlreadyLeftAreIgnored() {
        var machine = Machine(settings: settings(fixed: a), seed: 3)
        ready(&machine)
        #expect(machine.timerFired(.attempt, now: t0 + .seconds(10), lastRead: t0) == [])
        #expect(machine.timerFired(.address, now: t0 + .seconds(10), lastRead: t0) == [])
        #expect(machine.timerFired(.retry, now: t0 + .seconds(10), lastRead: t0) == [])
        #expect(machine.timerFired(.closing, now: t0 + .seconds(10), lastRead: t0) == [])
        #expect(machine.socketConnected(now: t0) == [])
        #expect(machine.handshakeReply(.simpleString("OK"), now: t0) == [])
    }

    // MARK: Supervision

    @Test func anIdleConnectionIsPingedAndASilentOneDeclaredDead() {
        var machine = Machine(settings: settings(fixed: a), seed: 3)
        ready(&machine)
        // Something was read 3 s in: the check moves to 5 s after that.
        #expect(machine.timerFired(.health, now: t0 + .seconds(5), lastRead: t0 + .seconds(3)) == [.schedule(.health, at: t0 + .seconds(8))])
        #expect(machine.timerFired(.health, now: t0 + .seconds(8), lastRead: t0 + .seconds(3)) == [.sendHealthPing, .schedule(.health, at: t0 + .seconds(10))])
        // Bytes arrived after the PING (a large reply ahead of the PONG): not dead yet.
        #expect(machine.timerFired(.health, now: t0 + .seconds(10), lastRead: t0 + .seconds(9)) == [.schedule(.health, at: t0 + .seconds(11))])
        let dead = machine.timerFired(.health, now: t0 + .seconds(11), lastRead: t0 + .seconds(9))
        #expect(dead.contains { if case .closeSocket(let error) = $0 { error.message.contains("health check") } else { false } })
        #expect(lost(dead)?.code == .timeout)
        #expect(retries(dead))
    }

    @Test func aBusyConnectionIsNotPingedItsCommandsTimeoutsJudgeIt() {
        var machine = Machine(settings: settings(fixed: a), seed: 3)
        ready(&machine)
        // A 3 s script was written at 4 s, due by 9 s: no PING behind it (it could not be answered in time).
        #expect(machine.timerFired(.health, now: t0 + .seconds(5), lastRead: t0, busyUntil: t0 + .seconds(9)) == [.schedule(.health, at: t0 + .seconds(9))])
        // Done at 7 s (read then); idle again: the next check counts from that read.
        #expect(machine.timerFired(.health, now: t0 + .seconds(9), lastRead: t0 + .seconds(7), busyUntil: t0 + .seconds(9)) == [.schedule(.health, at: t0 + .seconds(12))])
        #expect(machine.timerFired(.health, now: t0 + .seconds(12), lastRead: t0 + .seconds(7), busyUntil: nil).first == .sendHealthPing)
    }

    @Test func aLongDeadlineAheadDoesNotPostponeTheNextCheckPastAnInterval() {
        var machine = Machine(settings: settings(fixed: a), seed: 3)
        ready(&machine)
        // A command due in 30 s: the check looks again after one interval, not at 30 s.
        #expect(machine.timerFired(.health, now: t0 + .seconds(5), lastRead: t0, busyUntil: t0 + .seconds(35)) == [.schedule(.health, at: t0 + .seconds(10))])
    }

    @Test func aPingHeldBackByASlowCommandWrittenAfterItIsNotADeath() {
        var machine = Machine(settings: settings(fixed: a), seed: 3)
        ready(&machine)
        #expect(machine.timerFired(.health, now: t0 + .seconds(5), lastRead: t0).first == .sendHealthPing)
        // A 3 s script written right after the PING, due by 15 s: Redis writes the PONG only after running it.
        #expect(machine.timerFired(.health, now: t0 + .seconds(7), lastRead: t0, busyUntil: t0 + .seconds(15)) == [.schedule(.health, at: t0 + .seconds(12))])
        // Without such a command (only the PING's own deadline, which the connection leaves out), the silence kills.
        let dead = machine.timerFired(.health, now: t0 + .seconds(12), lastRead: t0, busyUntil: nil)
        #expect(lost(dead)?.message.contains("health check") == true)
    }

    @Test func aPongHeldBackByIncomingDataIsNotLate() {
        var machine = Machine(settings: settings(fixed: a), seed: 3)
        ready(&machine)
        _ = machine.timerFired(.health, now: t0 + .seconds(5), lastRead: t0)  // PING
        // Messages keep arriving ahead of the PONG (a subscriber): alive, the check waits from the last read.
        #expect(machine.timerFired(.health, now: t0 + .seconds(7), lastRead: t0 + .milliseconds(6500)) == [.schedule(.health, at: t0 + .milliseconds(8500))])
        let dead = machine.timerFired(.health, now: t0 + .milliseconds(8500), lastRead: t0 + .milliseconds(6500))
        #expect(lost(dead)?.message.contains("health check") == true)
    }

    @Test func anyReplyToTheHealthPingProvesLife() {
        var machine = Machine(settings: settings(fixed: a), seed: 3)
        ready(&machine)
        #expect(machine.timerFired(.health, now: t0 + .seconds(5), lastRead: t0).first == .sendHealthPing)
        // An error reply (-BUSY, -LOADING, NOPERM) is a reply: the check goes on, it is not turned off.
        #expect(machine.healthPingAnswered(now: t0 + .seconds(6)) == [.schedule(.health, at: t0 + .seconds(11))])
        #expect(machine.timerFired(.health, now: t0 + .seconds(11), lastRead: t0 + .seconds(6)).first == .sendHealthPing)
        #expect(machine.healthPingAnswered(now: t0 + .seconds(12)) == [.schedule(.health, at: t0 + .seconds(17))])
        #expect(machine.healthPingAnswered(now: t0 + .seconds(12)) == [])  // no PING in flight: nothing to do
    }

    @Test func aCommandOverdueWithNothingReadSinceItWasWrittenKillsTheConnection() {
        var machine = Machine(settings: settings(fixed: a, health: nil), seed: 3)
        ready(&machine)
        // Something arrived after the command was written (a reply streaming in): only that command is late.
        #expect(machine.commandOverdue(writtenAt: t0 + .seconds(1), lastRead: t0 + .seconds(2), now: t0 + .seconds(6)) == [])
        let dead = machine.commandOverdue(writtenAt: t0 + .seconds(1), lastRead: t0, now: t0 + .seconds(6))
        #expect(lost(dead)?.message.contains("replaced") == true)
        #expect(machine.commandOverdue(writtenAt: t0, lastRead: t0, now: t0 + .seconds(7)) == [])  // already lost
    }

    @Test func withoutAHealthCheckNoTimerIsScheduled() {
        var machine = Machine(settings: settings(fixed: a, health: nil), seed: 3)
        _ = machine.start(now: t0)
        _ = machine.socketConnected(now: t0)
        let actions = machine.handshakeReply(.simpleString("PONG"), now: t0)
        #expect(scheduled(.health, in: actions) == nil)
    }

    // MARK: Closing

    @Test func closeWaitsForInFlightCommandsWithinTheCommandTimeout() {
        var machine = Machine(settings: settings(fixed: a), seed: 3)
        ready(&machine)
        #expect(machine.closeRequested(drained: false, now: t0) == [.schedule(.closing, at: t0 + .seconds(5))])
        #expect(machine.isClosing && machine.acceptsCommands)
        #expect(finished(machine.drained()) == .some(nil))
        #expect(machine.isClosed && !machine.acceptsCommands)
        #expect(machine.drained() == [] && machine.forceClose() == [])
    }

    @Test func aGracefulCloseEndsAtItsDeadlineOrWhenTheServerIsFoundDead() {
        var slow = Machine(settings: settings(fixed: a), seed: 3)
        ready(&slow)
        _ = slow.closeRequested(drained: false, now: t0)
        let ended = slow.timerFired(.closing, now: t0 + .seconds(5), lastRead: t0)
        #expect(finished(ended) == .some(nil))
        #expect(Machine.Timer.allCases.allSatisfy { ended.contains(.cancel($0)) })

        var frozen = Machine(settings: settings(fixed: a), seed: 3)
        ready(&frozen)
        _ = frozen.closeRequested(drained: false, now: t0)
        _ = frozen.timerFired(.health, now: t0 + .seconds(5), lastRead: t0)  // PING
        #expect(finished(frozen.timerFired(.health, now: t0 + .seconds(7), lastRead: t0)) == .some(nil))

        var lostWhileClosing = Machine(settings: settings(fixed: a), seed: 3)
        ready(&lostWhileClosing)
        _ = lostWhileClosing.closeRequested(drained: false, now: t0)
        #expect(finished(lostWhileClosing.socketClosed(RedisError(.connectionClosed, "gone"), now: t0)) == .some(nil))
    }

    @Test func closeOrForceCloseBeforeReadyEndsAtOnce() {
        var connecting = Machine(settings: settings(), seed: 3)
        _ = connecting.start(now: t0)
        let actions = connecting.closeRequested(drained: true, now: t0)
        #expect(finished(actions)??.code == .connectionClosed)
        #expect(actions.contains { if case .closeSocket = $0 { true } else { false } })

        var reconnecting = Machine(settings: settings(fixed: a), seed: 3)
        ready(&reconnecting)
        _ = reconnecting.socketClosed(RedisError(.connectionClosed, "gone"), now: t0)
        #expect(finished(reconnecting.forceClose()) == .some(nil))  // it had connected: a plain close

        var busy = Machine(settings: settings(fixed: a), seed: 3)
        ready(&busy)
        _ = busy.closeRequested(drained: false, now: t0)
        #expect(finished(busy.forceClose()) == .some(nil))
    }

    @Test func hugeReconnectDelaysSaturateInsteadOfTrapping() {
        var random = JitterRandom(seed: 9)
        let policy = ReconnectPolicy(initialDelay: .seconds(Int64.max / 4), maximumDelay: .seconds(Int64.max / 2))
        for attempt in [0, 1, 62, 1000, -1] {
            let delay = policy.delay(attempt: attempt, using: &random)
            #expect(delay >= .zero && delay <= .seconds(1_000_000_000))
        }
    }
}

extension Array where Element == ConnectionStateMachine.Action {
    /// The delay of the retry these actions schedule, counted from `now`.
    fileprivate func retryDelay(from now: ContinuousClock.Instant) -> Duration {
        for action in self { if case .schedule(.retry, let at) = action { return at - now } }
        return .zero
    }
}
