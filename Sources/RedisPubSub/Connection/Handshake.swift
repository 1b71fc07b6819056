/// The commands a new connection sends before it is ready, in one write, and what their replies mean.
///
/// Replies are judged by what they say, never by their position: a server out of client slots answers the new
/// socket with `-ERR max number of clients reached` before it reads anything, so that error arrives where the first
/// step's reply was expected, and it is the server's own (retryable) reason, not a refused password. A pure value:
/// it holds no credentials (the driver fills them in when it encodes ``Step/auth``).
struct Handshake: Hashable, Sendable {
    /// One command of the handshake.
    enum Step: Hashable, Sendable {
        /// `AUTH [user] password`.
        case auth
        /// `SELECT database`.
        case select(Int)
        /// `CLIENT SETNAME name`.
        case setName(String)
        /// `PING`: its reply, the last, proves the connection usable (authenticated when the server requires it).
        case ping

        /// The command as error messages name it.
        var name: String {
            switch self {
            case .auth: "AUTH"
            case .select(let database): "SELECT \(database)"
            case .setName: "CLIENT SETNAME"
            case .ping: "PING"
            }
        }
    }

    /// What one reply means for the connection.
    enum Outcome: Hashable, Sendable {
        /// The step did what it should.
        case done
        /// The step did not take effect, but the connection works (a client name the ACL does not allow to set).
        case doneWithWarning(String)
        /// The attempt fails with this error; ``ConnectionStateMachine/isRetryable(_:)`` says whether to try again.
        case failed(RedisError)
    }

    /// The steps, in the order they are written.
    let steps: [Step]

    init(authenticates: Bool, database: Int, clientName: String?) {
        var steps: [Step] = []
        if authenticates { steps.append(.auth) }
        if database != 0 { steps.append(.select(database)) }
        if let clientName { steps.append(.setName(clientName)) }
        steps.append(.ping)
        self.steps = steps
    }

    /// Judges the reply that arrived where `step`'s was expected.
    static func outcome(of reply: RedisValue, to step: Step) -> Outcome {
        guard case .error(let message) = reply else { return .done }
        return outcome(ofError: message, to: step)
    }

    static func outcome(ofError message: String, to step: Step) -> Outcome {
        // The server's own state first: whichever step this arrived for, waiting can fix it.
        if isServerCondition(message) { return .failed(RedisError(.serverError, message)) }
        if isCredentialError(message) {
            return .failed(RedisError(.authenticationFailed, "authentication failed: \(message)"))
        }
        if message.hasPrefix("DENIED") {
            // Protected mode: no password is set and this client is not on loopback. Waiting cannot fix it.
            return .failed(RedisError(.permissionDenied, "the server refuses this client: \(message)"))
        }
        let permission = message.hasPrefix("NOPERM")
        let unknownCommand = message.hasPrefix("ERR unknown command")
        switch step {
        case .ping:
            // The connection works if the server only refuses the PING itself: an ACL user without `+ping` (one
            // allowed only to subscribe, say) gets NOPERM and is connected and authenticated; a server that renamed
            // PING away says so. Any other error is the server's reason, retried with backoff.
            if permission || unknownCommand { return .done }
            return .failed(RedisError(.serverError, message))
        case .setName:
            if permission || unknownCommand {
                return .doneWithWarning("the client name was not set: \(message)")
            }
            return .failed(RedisError(.invalidConfiguration, "\(step.name) failed: \(message)"))
        case .select:
            if permission { return .failed(RedisError(.permissionDenied, "\(step.name) failed: \(message)")) }
            return .failed(RedisError(.invalidConfiguration, "\(step.name) failed: \(message)"))
        case .auth:
            if message.hasPrefix("ERR wrong number of arguments") {
                return .failed(RedisError(
                    .invalidConfiguration,
                    "AUTH failed: \(message) (a user name needs Redis 6 or later)"))
            }
            if permission { return .failed(RedisError(.permissionDenied, "AUTH failed: \(message)")) }
            // Anything else is not about the credentials: the server's reason, retried with backoff.
            return .failed(RedisError(.serverError, message))
        }
    }

    /// Errors about the server's state rather than this client's request: out of client slots, loading its data,
    /// busy with a script, a replica without its primary.
    static func isServerCondition(_ message: String) -> Bool {
        message.contains("max number of clients reached")
            || message.hasPrefix("LOADING") || message.hasPrefix("BUSY") || message.hasPrefix("MASTERDOWN")
            || message.hasPrefix("TRYAGAIN") || message.hasPrefix("CLUSTERDOWN")
    }

    /// Refused or missing credentials, in the wordings of Redis 2.x to 7.x and Valkey.
    static func isCredentialError(_ message: String) -> Bool {
        message.hasPrefix("WRONGPASS") || message.hasPrefix("NOAUTH")
            || message.hasPrefix("ERR invalid password")
            || message.hasPrefix("ERR invalid username-password pair")
            || message.hasPrefix("ERR Client sent AUTH, but no password is set")
            || (message.hasPrefix("ERR AUTH") && message.contains("without any password configured"))
    }
}
