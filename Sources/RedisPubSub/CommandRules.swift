/// Which commands ``RedisConnection/send(_:)`` takes: it shares one pipelined connection between every task and
/// re-establishes it after a loss, so a command that changes the connection's state, or holds it, would silently break
/// other callers or be undone by the next reconnect. Each refusal names what to use instead.
enum CommandRules {
    /// How a command that may be sent uses its connection.
    enum Use: Hashable, Sendable {
        /// Answered as soon as the server runs it.
        case ordinary
        /// The server may hold the reply for this long (`nil`: until something happens, however long), and every
        /// command behind it on the same connection waits too.
        case blocking(Duration?)
    }

    /// The check of ``RedisConnection/send(_:)``: refuses what would break the shared connection, blocking commands
    /// included (they go through ``RedisConnection/sendBlocking(_:)``).
    static func checkShared(_ command: [RedisArgument]) throws(RedisError) {
        if case .blocking = try use(of: command) {
            let name = String(decoding: command[0].bytes, as: UTF8.self).uppercased()
            throw RedisError(
                .invalidArgument,
                "\(name) can hold the shared connection, and every other caller's command behind it, until it returns: "
                    + "use sendBlocking(_:), which runs it on a connection of its own")
        }
    }

    /// How `command` uses its connection; throws for commands no shared, reconnecting connection can take.
    static func use(of command: [RedisArgument]) throws(RedisError) -> Use {
        guard let first = command.first else { throw RedisError(.invalidArgument, "empty command") }
        // Cheap first: every name below is 4 to 12 bytes long and starts with one of these letters.
        guard (4...12).contains(first.count), let initial = first.firstByte,
              "ABCDEHMPRSUWXabcdehmprsuwx".utf8.contains(initial)
        else { return .ordinary }
        let name = String(decoding: first.bytes, as: UTF8.self).uppercased()
        func argument(_ index: Int) -> String? {
            index < command.count ? String(decoding: command[index].bytes, as: UTF8.self) : nil
        }
        func refuse(_ why: String) -> RedisError { RedisError(.invalidArgument, "\(name) is not available here: \(why)") }
        switch name {
        case "SUBSCRIBE", "PSUBSCRIBE", "SSUBSCRIBE", "UNSUBSCRIBE", "PUNSUBSCRIBE", "SUNSUBSCRIBE":
            throw refuse("use Subscriber, which routes messages and resubscribes after a reconnect")
        case "MONITOR":
            throw refuse("it turns the connection into a stream")
        case "MULTI", "EXEC", "DISCARD":
            throw refuse(
                "on a shared connection other tasks' commands would join the transaction; use transaction(_:), which "
                    + "writes MULTI ... EXEC as one block")
        case "WATCH", "UNWATCH":
            throw refuse(
                "a WATCH would watch for every task sharing the connection; for a check-and-set, use a script "
                    + "(EVAL, FCALL), which runs atomically")
        case "SELECT":
            throw refuse("the next reconnect would undo it; set RedisConfiguration.database")
        case "AUTH":
            throw refuse("the next reconnect would undo it; set RedisConfiguration.username and .password")
        case "HELLO":
            throw refuse("the connection speaks RESP2 and authenticates from its configuration")
        case "RESET":
            throw refuse("it would undo the connection's AUTH, SELECT and client name")
        case "CLIENT":
            switch argument(1)?.uppercased() {
            case "SETNAME": throw refuse("the next reconnect would undo CLIENT SETNAME; set RedisConfiguration.clientName")
            case "REPLY": throw refuse("every command here expects its reply, so CLIENT REPLY cannot work")
            default: return .ordinary
            }
        case "BLPOP", "BRPOP", "BZPOPMIN", "BZPOPMAX", "BRPOPLPUSH", "BLMOVE":
            return .blocking(seconds(argument(command.count - 1)))
        case "BLMPOP", "BZMPOP":
            return .blocking(seconds(argument(1)))
        case "XREAD", "XREADGROUP":
            var index = 1
            while let word = argument(index)?.uppercased(), word != "STREAMS" {
                if word == "BLOCK" { return .blocking(milliseconds(argument(index + 1))) }
                index += 1
            }
            return .ordinary
        case "WAIT":
            return .blocking(milliseconds(argument(2)))
        case "WAITAOF":
            return .blocking(milliseconds(argument(3)))
        default:
            return .ordinary
        }
    }

    /// A blocking command's timeout in seconds (`0`: forever). Unreadable values count as forever (the server
    /// refuses them anyway).
    private static func seconds(_ text: String?) -> Duration? {
        guard let text, let value = Double(text), value > 0, value.isFinite else { return nil }
        return .milliseconds(Int64(min(value, 1e9) * 1000))
    }

    private static func milliseconds(_ text: String?) -> Duration? {
        guard let text, let value = Int64(text), value > 0 else { return nil }
        return .milliseconds(value)
    }
}
