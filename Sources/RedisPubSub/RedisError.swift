/// The one error type of this package.
///
/// Match on ``code`` to decide what to do; ``message`` says what happened in words fit for a log line.
/// Neither ever contains a password.
///
/// ```swift
/// do {
///     try await connection.send("GET", "key")
/// } catch let error as RedisError where error.code == .timeout {
///     // retry, or give up
/// }
/// ```
public struct RedisError: Error, Hashable, Sendable, CustomStringConvertible {
    /// What went wrong, as a value to switch on.
    public struct Code: Hashable, Sendable, CustomStringConvertible {
        private enum Base: String, Hashable, Sendable {
            case invalidConfiguration, invalidArgument, connectionRefused, hostUnreachable, nameResolutionFailed
            case timeout, authenticationFailed, permissionDenied, serverError, protocolError, connectionClosed, overloaded
            case cancelled
        }
        private let base: Base
        private init(_ base: Base) { self.base = base }

        /// The configuration cannot work: a malformed URL, a port out of range, a negative timeout.
        public static let invalidConfiguration = Code(.invalidConfiguration)
        /// A call's arguments cannot be sent: for example a command this API reserves for ``Subscriber``.
        public static let invalidArgument = Code(.invalidArgument)
        /// Nothing listens at the address (`ECONNREFUSED`), or the Unix socket does not exist.
        public static let connectionRefused = Code(.connectionRefused)
        /// The host or its network cannot be reached.
        public static let hostUnreachable = Code(.hostUnreachable)
        /// The host name does not resolve to an address.
        public static let nameResolutionFailed = Code(.nameResolutionFailed)
        /// The connect timeout or the command timeout elapsed.
        public static let timeout = Code(.timeout)
        /// The server refused the credentials (`WRONGPASS`, or a password set where none is required, or none
        /// given where one is).
        public static let authenticationFailed = Code(.authenticationFailed)
        /// The server's ACLs forbid the command, key or channel (`NOPERM`).
        public static let permissionDenied = Code(.permissionDenied)
        /// The server answered with an error reply; ``RedisError/message`` is the server's text.
        public static let serverError = Code(.serverError)
        /// The bytes from the server are not valid RESP, or not the reply the command calls for.
        public static let protocolError = Code(.protocolError)
        /// The connection is closed: by ``RedisConnection/close()``, by the server, or by a network error.
        public static let connectionClosed = Code(.connectionClosed)
        /// Nothing was sent: the connection already holds as much unanswered work as
        /// ``RedisConfiguration/maximumPendingCommands`` and ``RedisConfiguration/maximumPendingBytes`` allow, because
        /// the server answers slower than the callers send, or not at all. Retry later, or slow down.
        public static let overloaded = Code(.overloaded)
        /// The calling task was cancelled before the result arrived (Swift's `CancellationError`, as a code: every
        /// call of this package throws ``RedisError`` only). Whether a command already written ran is unknown.
        public static let cancelled = Code(.cancelled)

        /// The code's name, e.g. `timeout`.
        public var description: String { base.rawValue }
    }

    /// What went wrong.
    public var code: Code
    /// A human-readable account: for ``Code/serverError`` exactly the server's error text.
    public var message: String

    /// Creates an error. Tests and adapters use this; the package creates its own.
    public init(_ code: Code, _ message: String) {
        self.code = code
        self.message = message
    }

    /// `code: message`.
    public var description: String { "\(code): \(message)" }

    /// The error of a call whose task was cancelled.
    static let cancelled = RedisError(.cancelled, "the task was cancelled")

    /// Throws ``cancelled`` when the current task is cancelled.
    static func checkCancellation() throws(RedisError) {
        if Task.isCancelled { throw cancelled }
    }

    /// Classifies a server error reply (`-ERR ...`, `-NOPERM ...`) by its prefix.
    static func server(_ message: String) -> RedisError {
        if message.hasPrefix("NOPERM") { return RedisError(.permissionDenied, message) }
        if message.hasPrefix("WRONGPASS") || message.hasPrefix("NOAUTH") { return RedisError(.authenticationFailed, message) }
        return RedisError(.serverError, message)
    }
}
