internal import CHiredis
#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#elseif canImport(Darwin)
import Darwin
#endif

/// What a ``HiredisContext`` tells its owner. Called on the loop thread, never from inside a hiredis call. Each call
/// names the context, so an owner that replaced its context can ignore the old one's last words.
protocol HiredisContextDelegate: AnyObject {
    /// The TCP connection is established and the TLS handshake begins (TLS connections only).
    func hiredisContextDidStartTLSHandshake(_ context: HiredisContext)
    /// The TCP or Unix connection (and its TLS session, if any) is established; commands may be written.
    func hiredisContextDidConnect(_ context: HiredisContext)
    /// One complete reply, copied out of hiredis. Top-level error replies arrive as ``RedisValue/error(_:)``.
    func hiredisContext(_ context: HiredisContext, didReceive reply: RedisValue)
    /// A Pub/Sub message, recognised in the raw reply (only when ``HiredisContext/decodesPushes`` is set). The buffers
    /// point into hiredis's reply and are valid only during the call.
    func hiredisContext(_ context: HiredisContext, didReceivePush push: RawPush)
    /// The replies of one read from the socket were all delivered.
    func hiredisContextDidFinishReading(_ context: HiredisContext)
    /// The socket took (part of) the output buffer: there is room for more (``HiredisContext/outputLength``).
    func hiredisContextDidWrite(_ context: HiredisContext)
    /// The context is gone: a connect failure, a network or protocol error, end of stream, or ``HiredisContext/close(cause:)``.
    /// Called exactly once, last.
    func hiredisContext(_ context: HiredisContext, didCloseWith error: RedisError)
}

/// A `message`, `pmessage` or `smessage` push, borrowed from hiredis's reply for the duration of one call.
struct RawPush {
    let kind: SubscriptionKind
    let channel: UnsafeRawBufferPointer
    let pattern: UnsafeRawBufferPointer?
    let payload: UnsafeRawBufferPointer
}

/// Owns one `redisAsyncContext` and drives it from an ``EventLoop``. Loop-confined: every method runs on the loop.
///
/// hiredis connects and writes through its async API, with this class as its event library (`ac->ev` hooks).
/// Reading bypasses `redisAsyncHandleRead`: the class calls `redisBufferRead` and `redisGetReplyFromReader` itself
/// and hands every reply to the delegate, which matches it to a request or routes it as a Pub/Sub push. hiredis's
/// reply-callback list and its Pub/Sub dictionaries are therefore never used, which makes its Pub/Sub
/// abort and use-after-free paths (0.14 `async.c:389`, `:478`, PING while subscribed, SSUBSCRIBE) unreachable.
final class HiredisContext: EventLoopSource {
    private enum Event {
        case handshakeStarted
        case connected
        case closed(RedisError)
    }

    let loop: EventLoop
    let address: ServerAddress
    private var delegate: (any HiredisContextDelegate)?
    private var context: UnsafeMutablePointer<redisAsyncContext>?
    private var fd: Int32 = -1
    private var wantRead = false
    private var wantWrite = false
    private var connected = false
    private var closeCause: RedisError?
    private var events: [Event] = []
    /// Depth of hiredis calls and reply deliveries in progress: events wait until the outermost one returns, so a
    /// close never reaches the delegate in the middle of its own code.
    private var dispatching = 0
    /// Recognise Pub/Sub messages in raw replies and hand them over without building a ``RedisValue``
    /// (Subscriber connections).
    var decodesPushes = false
    /// Keeps this object alive while hiredis holds pointers to it (`ac->data`, `ac->ev.data`); cleared by `cleanup`.
    private var retainedByContext: HiredisContext?

    // MARK: TLS
    /// The TLS session, for a `rediss://` connection: hiredis then connects the socket and parses replies, and this
    /// class does the socket reads and writes, through the session.
    private let tls: TLSSession?
    /// TCP is connected and the TLS handshake is under way (``connected`` comes when it completes).
    private var handshaking = false
    /// The TCP connect completed inside a hiredis call; the handshake starts once that call has returned.
    private var handshakePending = false
    /// Whether anything arrived from the server since the handshake began: its first byte tells TLS from plaintext.
    private var receivedHandshakeBytes = false
    /// Ciphertext waiting for the socket, from `ciphertextSent` on.
    private var ciphertext: [UInt8] = []
    private var ciphertextSent = 0
    /// Decrypted bytes on their way to hiredis's reader: one TLS record's worth, allocated once per TLS connection.
    private let plaintextBuffer: UnsafeMutableRawBufferPointer?

    /// Starts a non-blocking connect. The delegate later gets ``HiredisContextDelegate/hiredisContextDidConnect(_:)``
    /// or ``HiredisContextDelegate/hiredisContext(_:didCloseWith:)``.
    ///
    /// - Throws: ``RedisError`` when the connect fails at once (for example a refused loopback port or a missing socket file).
    init(
        address: ServerAddress, loop: EventLoop, delegate: any HiredisContextDelegate, tls: TLSSession? = nil
    ) throws(RedisError) {
        loop.assertInLoop()
        self.loop = loop
        self.address = address
        self.delegate = delegate
        self.tls = tls
        self.plaintextBuffer = tls == nil ? nil : .allocate(byteCount: TLSSession.recordSize, alignment: 1)

        let created: UnsafeMutablePointer<redisAsyncContext>?
        errno = 0
        switch address {
        case .tcp(let ip, let port): created = redisAsyncConnect(ip, Int32(port))
        case .unix(let path): created = redisAsyncConnectUnix(path)
        }
        let connectErrno = errno
        guard let ac = created else {
            throw RedisError(.connectionClosed, "cannot connect to \(address): out of memory")
        }
        if ac.pointee.err != 0 {
            let error = Self.connectError(chiredis_context(ac), address: address, errno: connectErrno)
            // > redisAsyncConnect: "check ac->err and free with redisAsyncFree yourself". No hooks are set yet.
            redisAsyncFree(ac)
            throw error
        }
        context = ac
        fd = chiredis_context(ac).pointee.fd
        retainedByContext = self
        if case .tcp = address { Self.enableKeepAlive(fd) }

        // Unmanaged because: hiredis stores the pointer without retaining it; `retainedByContext` keeps `self` alive
        // until the `cleanup` hook, the last time hiredis uses it.
        let me = Unmanaged.passUnretained(self).toOpaque()
        ac.pointee.data = me
        ac.pointee.ev.data = me
        ac.pointee.ev.addRead = { HiredisContext.from($0).setInterest(read: true) }
        ac.pointee.ev.delRead = { HiredisContext.from($0).setInterest(read: false) }
        ac.pointee.ev.addWrite = { HiredisContext.from($0).setInterest(write: true) }
        ac.pointee.ev.delWrite = { HiredisContext.from($0).setInterest(write: false) }
        ac.pointee.ev.cleanup = { HiredisContext.from($0).contextWillBeFreed() }
        // Set last: setting the connect callback asks for write readiness (0.14 async.c:213), which needs the hooks.
        redisAsyncSetConnectCallback(ac) { ac, status in
            guard let data = ac?.pointee.data else { return }
            HiredisContext.from(data).didConnect(status: status)
        }
    }

    deinit {
        assert(context == nil, "HiredisContext released while hiredis still holds it")
        plaintextBuffer?.deallocate()
    }

    private static func from(_ data: UnsafeMutableRawPointer?) -> HiredisContext {
        Unmanaged<HiredisContext>.fromOpaque(data!).takeUnretainedValue()
    }

    /// Whether the context is connected and not yet closed.
    var isOpen: Bool { context != nil && connected }

    /// Appends one or more RESP-encoded commands to hiredis's output buffer. ``flush()`` sends them.
    func append(_ bytes: UnsafeRawBufferPointer) {
        loop.assertInLoop()
        guard let ac = context, bytes.count > 0 else { return }
        // Before the TLS session is up, hiredis's own write path would send these bytes (AUTH among them) in clear.
        guard tls == nil || connected else {
            assertionFailure("a command appended before the TLS handshake completed")
            return fail(RedisError(.invalidArgument, "a command was written before the TLS handshake completed"))
        }
        let rc = redisAppendFormattedCommand(
            chiredis_context(ac), bytes.baseAddress!.assumingMemoryBound(to: CChar.self), bytes.count)
        if rc != REDIS_OK {
            fail(RedisError(.connectionClosed, "hiredis could not buffer a command: out of memory"))
        }
    }

    /// Writes what the output buffer holds now, as far as the socket takes it; the rest goes when it is writable.
    func flush() {
        loop.assertInLoop()
        guard let ac = context, connected else { return }
        if tls != nil { return writeThroughTLS() }
        dispatching += 1
        redisAsyncHandleWrite(ac)  // may free the context on a write error (then `cleanup` ran)
        dispatching -= 1
        deliverEvents()
    }

    /// Closes the connection now. Buffered writes are dropped. The delegate gets `hiredisContextDidClose` with
    /// `cause`, or ``RedisError/Code/connectionClosed`` when none is given.
    func close(cause: RedisError? = nil) {
        loop.assertInLoop()
        // close_notify, best effort: the socket closes right after. Not behind commands the socket has not taken:
        // their callers are told they failed, so they must not reach the server after all (as in plaintext).
        if let tls, connected, ciphertextSent == ciphertext.count {
            tls.shutdown()
            tls.takeOutput(into: &ciphertext)
            sendCiphertextBestEffort()
        }
        fail(cause ?? RedisError(.connectionClosed, "connection closed"))
    }

    // MARK: EventLoopSource

    func writable() {
        guard let ac = context else { return }
        if tls != nil, connected || handshaking {
            sendCiphertext()
            if handshaking { return advanceHandshake() }
            if context != nil, ciphertextSent == ciphertext.count { delegate?.hiredisContextDidWrite(self) }
            return
        }
        let wasConnected = connected
        dispatching += 1
        // Connect completion is decided inside (SO_ERROR on the first writable event, 0.14 async.c:509-526).
        redisAsyncHandleWrite(ac)
        dispatching -= 1
        deliverEvents()
        if handshakePending {
            handshakePending = false
            advanceHandshake()
            return
        }
        if wasConnected, context != nil { delegate?.hiredisContextDidWrite(self) }
    }

    /// Bytes in hiredis's output buffer, not yet taken by the socket.
    var outputLength: Int {
        guard let ac = context else { return 0 }
        return Int(chiredis_output_length(chiredis_context(ac))) + ciphertext.count - ciphertextSent
    }

    func readable() {
        guard let ac = context, connected || handshaking else { return }
        let c = chiredis_context(ac)
        dispatching += 1
        defer {
            dispatching -= 1
            deliverEvents()
        }
        if tls != nil {
            guard receiveThroughTLS(c) else { return }
            return decryptAndDeliver(c)
        }
        guard redisBufferRead(c) == REDIS_OK else {
            fail(Self.ioError(c))
            return
        }
        if deliverReplies(c) { delegate?.hiredisContextDidFinishReading(self) }
    }

    /// Hands every complete reply in hiredis's reader to the delegate. Returns `false` when the connection failed or
    /// was closed on the way.
    private func deliverReplies(_ c: UnsafeMutablePointer<redisContext>) -> Bool {
        var raw: UnsafeMutableRawPointer?
        while context != nil {
            guard redisGetReplyFromReader(c, &raw) == REDIS_OK else {
                fail(RedisError(.protocolError, "invalid reply from the server: " + String(cString: chiredis_errstr(c))))
                return false
            }
            guard let reply = raw else {
                // Incomplete: what the reader holds so far must not nest deeper than a reply may (hiredis 1.x has no
                // limit of its own before 1.3, and only a loose one since; 0.14 stops at 7).
                if chiredis_reader_depth(c) >= RedisValue.maximumDepth {
                    fail(Self.tooDeep)
                    return false
                }
                return true
            }
            let typed = reply.assumingMemoryBound(to: redisReply.self)
            if decodesPushes, let push = Self.push(typed) {
                delegate?.hiredisContext(self, didReceivePush: push)
                freeReplyObject(reply)
                raw = nil
                continue
            }
            let value: RedisValue
            do {
                value = try RedisValue.decode(typed)
            } catch {
                freeReplyObject(reply)
                fail(error)
                return false
            }
            freeReplyObject(reply)
            raw = nil
            delegate?.hiredisContext(self, didReceive: value)  // may close: the loop condition re-checks `context`
        }
        return false
    }

    // MARK: TLS driver

    /// Advances the handshake with what has arrived and sends what it produced; on completion the connection is
    /// open (the delegate gets ``HiredisContextDelegate/hiredisContextDidConnect(_:)``).
    private func advanceHandshake() {
        guard let tls, handshaking, context != nil else { return }
        let complete: Bool
        do {
            complete = try tls.handshake()
        } catch {
            closeCause = closeCause ?? error  // what the delegate hears, also if sending the alert fails
            tls.takeOutput(into: &ciphertext)  // the alert telling the server why, best effort
            sendCiphertextBestEffort()
            return fail(error)
        }
        tls.takeOutput(into: &ciphertext)
        sendCiphertext()
        guard complete, context != nil else { return }
        handshaking = false
        connected = true
        setInterest(read: true)
        events.append(.connected)
        deliverEvents()
    }

    /// Receives one chunk of ciphertext from the socket into the session (at most 64 KiB: as in plaintext, one read
    /// per readiness event, so a fast server cannot keep the loop here) and advances a handshake in progress.
    /// Returns `false` when the connection failed (then closed) or is still handshaking.
    private func receiveThroughTLS(_ c: UnsafeMutablePointer<redisContext>) -> Bool {
        guard let tls else { return false }
        let chunk = 64 * 1024
        while true {
            var plaintextAnswer: String?
            let count = withUnsafeTemporaryAllocation(byteCount: chunk, alignment: 1) { scratch -> Int in
                let count = recv(fd, scratch.baseAddress, chunk, 0)
                guard count > 0 else { return count }
                let received = UnsafeRawBufferPointer(rebasing: scratch[..<count])
                if handshaking && !receivedHandshakeBytes {
                    receivedHandshakeBytes = true
                    plaintextAnswer = Self.plaintextAnswer(received)
                }
                tls.receive(received)
                return count
            }
            if let plaintextAnswer {
                fail(
                    RedisError(
                        .invalidConfiguration,
                        "the server answered the TLS handshake in plaintext (\(plaintextAnswer)): this port does not "
                            + "speak TLS; use redis:// or the server's tls-port"))
                return false
            }
            if count > 0 { break }
            let failure = errno
            if count < 0, failure == EINTR { continue }
            if count < 0, failure == EAGAIN || failure == EWOULDBLOCK { break }  // spurious: what came is decrypted
            if count == 0 || failure == ECONNRESET, !handshaking, tls.holdsUnreadBytes || chiredis_reader_mid_reply(c) != 0 {
                fail(Self.closedMidReply)
            } else if count == 0 {
                fail(
                    RedisError(
                        .connectionClosed,
                        handshaking
                            ? "the server closed the connection during the TLS handshake"
                            : "the server closed the connection"))
            } else {
                fail(RedisError(.connectionClosed, "connection lost: \(String(cString: strerror(failure)))"))
            }
            return false
        }
        if handshaking {
            advanceHandshake()
            guard connected, context != nil else { return false }
        }
        return context != nil
    }

    /// Decrypts what the session holds, one TLS record at a time, feeding each to hiredis's reader and delivering
    /// the replies it completes before the next. Small pieces keep hiredis's reader cheap: it moves its unparsed rest
    /// to the front of its buffer after every kilobyte parsed, so one large feed would cost time quadratic in its size.
    private func decryptAndDeliver(_ c: UnsafeMutablePointer<redisContext>) {
        guard let tls, let plaintextBuffer else { return }
        while context != nil {
            let outcome: TLSSession.ReadResult
            do {
                outcome = try tls.read(into: plaintextBuffer)
            } catch {
                return fail(error)
            }
            if tls.hasOutput {  // a key update or the like wants an answer
                tls.takeOutput(into: &ciphertext)
                sendCiphertext()  // may fail the connection
                guard context != nil else { return }
            }
            switch outcome {
            case .bytes(let count):
                let fed = chiredis_reader_feed(c, plaintextBuffer.baseAddress!.assumingMemoryBound(to: CChar.self), count)
                guard fed == REDIS_OK else {
                    return fail(RedisError(.protocolError, "invalid reply from the server: " + String(cString: chiredis_errstr(c))))
                }
                guard deliverReplies(c) else { return }
            case .needsMore:
                delegate?.hiredisContextDidFinishReading(self)
                return
            case .closed:
                // Redis ends a TLS client it drops for its backlog with close_notify, right after part of a reply.
                return fail(
                    chiredis_reader_mid_reply(c) != 0
                        ? Self.closedMidReply : RedisError(.connectionClosed, "the server closed the TLS session"))
            }
        }
    }

    /// What a server that does not speak TLS answered to a ClientHello, shortened, or `nil` when `bytes` start like a
    /// TLS record (content types 20 to 23). Redis answers garbage with an error reply, `-ERR ...`.
    private static func plaintextAnswer(_ bytes: UnsafeRawBufferPointer) -> String? {
        guard let first = bytes.first, !(20...23).contains(first) else { return nil }
        let shown = bytes.prefix(while: { $0 >= 0x20 && $0 < 0x7F && $0 != UInt8(ascii: "'") }).prefix(40)
        return shown.isEmpty ? "not a TLS record" : "\"" + String(decoding: shown, as: UTF8.self) + "...\""
    }

    /// Encrypts all of hiredis's output buffer, empties it, and sends the ciphertext as far as the socket takes it.
    private func writeThroughTLS() {
        guard let tls, let ac = context else { return }
        let c = chiredis_context(ac)
        let length = Int(chiredis_output_length(c))
        if length > 0, let output = chiredis_output(c) {
            do {
                // A memory BIO takes everything; only a renegotiation (turned off) could make it take less.
                guard try tls.write(UnsafeRawBufferPointer(start: output, count: length)) == length else {
                    return fail(RedisError(.protocolError, "the TLS session took only part of a write"))
                }
            } catch {
                return fail(error)
            }
            chiredis_output_clear(c)
            tls.takeOutput(into: &ciphertext)
        }
        sendCiphertext()
    }

    /// Sends what ciphertext the socket takes now and forgets the rest, ignoring errors: for the last words before
    /// the socket closes (close_notify, an alert), which must not replace the reason it closes.
    private func sendCiphertextBestEffort() {
        if fd >= 0, ciphertextSent < ciphertext.count {
            _ = ciphertext[ciphertextSent...].withUnsafeBytes { write(fd, $0.baseAddress, $0.count) }
        }
        ciphertext.removeAll()
        ciphertextSent = 0
    }

    /// Writes waiting ciphertext until the socket would block; asks for write readiness while some is left.
    private func sendCiphertext() {
        guard fd >= 0 else { return }
        while ciphertextSent < ciphertext.count {
            let sent = ciphertext[ciphertextSent...].withUnsafeBytes { write(fd, $0.baseAddress, $0.count) }
            if sent > 0 {
                ciphertextSent += sent
                continue
            }
            if sent < 0, errno == EINTR { continue }
            if sent < 0, errno == EAGAIN || errno == EWOULDBLOCK { break }
            fail(RedisError(.connectionClosed, "connection lost: \(String(cString: strerror(errno)))"))
            return
        }
        if ciphertextSent == ciphertext.count {
            ciphertext.removeAll(keepingCapacity: ciphertext.capacity <= 1 << 20)
            ciphertextSent = 0
        } else if ciphertextSent >= 1 << 20, ciphertextSent >= ciphertext.count / 2 {
            // A socket that never quite drains would otherwise keep every byte ever sent: drop the sent part once it
            // is the larger half (the move costs less than what was sent since the last one).
            ciphertext.removeFirst(ciphertextSent)
            ciphertextSent = 0
        }
        setInterest()
    }

    // MARK: hiredis hooks and callbacks

    private func setInterest(read: Bool? = nil, write: Bool? = nil) {
        if let read { wantRead = read }
        if let write { wantWrite = write }
        guard fd >= 0 else { return }
        // Read interest waits for the connection: before it, readiness is decided by the write side only.
        let ciphertextWaits = ciphertextSent < ciphertext.count
        loop.setInterest(fd: fd, source: self, read: wantRead && (connected || handshaking), write: wantWrite || ciphertextWaits)
    }

    private func didConnect(status: Int32) {
        guard let ac = context else { return }
        if status == REDIS_OK, tls != nil {
            handshaking = true  // connected once the TLS handshake completes
            handshakePending = true
            setInterest(read: true)
            events.append(.handshakeStarted)
        } else if status == REDIS_OK {
            connected = true
            setInterest(read: true)  // read from now on, also when idle, to see the server close
            events.append(.connected)
        } else {
            // hiredis 1.x can report a failed connect with an empty errstr: its redisCheckConnectDone leaves the cause
            // in errno only. errno is still that connect's here, inside the callback.
            let savedErrno = errno
            closeCause = Self.connectError(chiredis_context(ac), address: address, errno: savedErrno)
            // hiredis frees the context right after this callback (and calls `cleanup`).
        }
    }

    /// The `cleanup` hook: hiredis is about to free the context. Runs once, possibly inside a hiredis call.
    private func contextWillBeFreed() {
        guard let ac = context else { return }
        let cause = closeCause ?? (connected ? Self.ioError(chiredis_context(ac)) : Self.connectError(chiredis_context(ac), address: address))
        loop.setInterest(fd: fd, source: self, read: false, write: false)
        fd = -1
        context = nil
        connected = false
        events.append(.closed(cause))
        // Keep `self` alive until the event is delivered; `deliverEvents` lets go.
    }

    private func fail(_ error: RedisError) {
        guard let ac = context else { return }
        closeCause = closeCause ?? error
        // Called from the loop, never from inside a hiredis callback: the free (and `cleanup`) happen now.
        redisAsyncFree(ac)
        deliverEvents()
    }

    private func deliverEvents() {
        guard dispatching == 0 else { return }
        while !events.isEmpty {
            let event = events.removeFirst()
            switch event {
            case .handshakeStarted:
                delegate?.hiredisContextDidStartTLSHandshake(self)
            case .connected:
                delegate?.hiredisContextDidConnect(self)
            case .closed(let error):
                let delegate = self.delegate
                self.delegate = nil
                let keepAlive = retainedByContext
                retainedByContext = nil
                delegate?.hiredisContext(self, didCloseWith: error)
                _ = keepAlive
            }
        }
    }

    // MARK: Socket options

    /// TCP keepalive: a peer that vanished (powered off, partitioned) is noticed by the kernel even on a connection
    /// that waits in silence on purpose (a blocking command, an idle subscriber between health checks): first probe
    /// after 15 s of silence, then every 5 s, dead after 3 unanswered probes. Best effort: a failing setsockopt leaves
    /// the connection as it is.
    private static func enableKeepAlive(_ fd: Int32) {
        var on: Int32 = 1
        _ = setsockopt(fd, SOL_SOCKET, SO_KEEPALIVE, &on, socklen_t(MemoryLayout<Int32>.size))
        var idle: Int32 = 15, interval: Int32 = 5, count: Int32 = 3
        #if canImport(Darwin)
        _ = setsockopt(fd, Int32(IPPROTO_TCP), TCP_KEEPALIVE, &idle, socklen_t(MemoryLayout<Int32>.size))
        #else
        _ = setsockopt(fd, Int32(IPPROTO_TCP), TCP_KEEPIDLE, &idle, socklen_t(MemoryLayout<Int32>.size))
        #endif
        _ = setsockopt(fd, Int32(IPPROTO_TCP), TCP_KEEPINTVL, &interval, socklen_t(MemoryLayout<Int32>.size))
        _ = setsockopt(fd, Int32(IPPROTO_TCP), TCP_KEEPCNT, &count, socklen_t(MemoryLayout<Int32>.size))
    }

    /// Whether TCP keepalive is on for this context's socket, and its idle time in seconds (for tests).
    var keepAlive: (enabled: Bool, idleSeconds: Int32)? {
        guard fd >= 0 else { return nil }
        var on: Int32 = 0, idle: Int32 = 0
        var length = socklen_t(MemoryLayout<Int32>.size)
        guard getsockopt(fd, SOL_SOCKET, SO_KEEPALIVE, &on, &length) == 0 else { return nil }
        length = socklen_t(MemoryLayout<Int32>.size)
        #if canImport(Darwin)
        _ = getsockopt(fd, Int32(IPPROTO_TCP), TCP_KEEPALIVE, &idle, &length)
        #else
        _ = getsockopt(fd, Int32(IPPROTO_TCP), TCP_KEEPIDLE, &idle, &length)
        #endif
        return (on != 0, idle)
    }

    private static var tooDeep: RedisError {
        RedisError(.protocolError, "the server sent a reply nested deeper than \(RedisValue.maximumDepth) levels")
    }

    // MARK: Pushes

    /// `["message", channel, payload]`, `["smessage", channel, payload]` or `["pmessage", pattern, channel, payload]`,
    /// all bulk strings; `nil` for anything else.
    private static func push(_ reply: UnsafePointer<redisReply>) -> RawPush? {
        let r = reply.pointee
        guard r.type == REDIS_REPLY_ARRAY, r.elements == 3 || r.elements == 4, let elements = r.element else { return nil }
        func bytes(_ index: Int) -> UnsafeRawBufferPointer? {
            guard let element = elements[index], element.pointee.type == REDIS_REPLY_STRING else { return nil }
            return UnsafeRawBufferPointer(start: element.pointee.str, count: Int(element.pointee.len))
        }
        guard let type = bytes(0) else { return nil }
        if r.elements == 3, Self.matches(type, "message"), let channel = bytes(1), let payload = bytes(2) {
            return RawPush(kind: .channel, channel: channel, pattern: nil, payload: payload)
        }
        if r.elements == 3, Self.matches(type, "smessage"), let channel = bytes(1), let payload = bytes(2) {
            return RawPush(kind: .shardChannel, channel: channel, pattern: nil, payload: payload)
        }
        if r.elements == 4, Self.matches(type, "pmessage"),
           let pattern = bytes(1), let channel = bytes(2), let payload = bytes(3) {
            return RawPush(kind: .pattern, channel: channel, pattern: pattern, payload: payload)
        }
        return nil
    }

    /// Whether `bytes` are `literal`'s: one `memcmp` (the generic `elementsEqual` over a `String.UTF8View` showed
    /// at 3.5% of a subscriber's profile, once per message).
    @inline(__always)
    private static func matches(_ bytes: UnsafeRawBufferPointer, _ literal: StaticString) -> Bool {
        bytes.count == literal.utf8CodeUnitCount && memcmp(bytes.baseAddress!, literal.utf8Start, bytes.count) == 0
    }

    // MARK: Errors

    /// An orderly close happens between replies. Cutting one in half is what Redis does to a client whose backlog
    /// passed its output buffer limit (for subscribers: `client-output-buffer-limit pubsub`).
    private static let closedMidReply = RedisError(
        .connectionClosed,
        "the server closed the connection in the middle of a reply: most likely this client's backlog passed the "
            + "server's client-output-buffer-limit (for subscribers, `pubsub`)")

    private static func ioError(_ c: UnsafeMutablePointer<redisContext>) -> RedisError {
        let text = String(cString: chiredis_errstr(c))
        let reset = c.pointee.err == REDIS_ERR_IO && text.contains(String(cString: strerror(ECONNRESET)))
        switch c.pointee.err {
        case REDIS_ERR_EOF where chiredis_reader_mid_reply(c) != 0, REDIS_ERR_IO where reset && chiredis_reader_mid_reply(c) != 0:
            return closedMidReply
        case REDIS_ERR_EOF: return RedisError(.connectionClosed, "the server closed the connection")
        case REDIS_ERR_PROTOCOL: return RedisError(.protocolError, "invalid reply from the server: \(text)")
        case 0: return RedisError(.connectionClosed, "connection closed")
        default: return RedisError(.connectionClosed, "connection lost: \(text)")
        }
    }

    private static func connectError(
        _ c: UnsafeMutablePointer<redisContext>,
        address: ServerAddress,
        errno savedErrno: Int32 = 0
    ) -> RedisError {
        var text = String(cString: chiredis_errstr(c))
        if text.isEmpty && savedErrno != 0 { text = String(cString: strerror(savedErrno)) }
        if text.isEmpty { text = "connection failed" }
        let message = "cannot connect to \(address): \(text)"
        func matches(_ code: Int32) -> Bool { text.contains(String(cString: strerror(code))) }
        if matches(ECONNREFUSED) || matches(ENOENT) { return RedisError(.connectionRefused, message) }
        if matches(EHOSTUNREACH) || matches(ENETUNREACH) || matches(EADDRNOTAVAIL) { return RedisError(.hostUnreachable, message) }
        if matches(ETIMEDOUT) { return RedisError(.timeout, message) }
        return RedisError(.connectionClosed, message)
    }
}
