#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#elseif canImport(Darwin)
import Darwin
#endif
import HeapModule

/// Something the loop polls: a file descriptor's owner, told when the descriptor is ready.
protocol EventLoopSource: AnyObject {
    /// The descriptor is readable, or hung up, or in error, and read interest is on.
    func readable()
    /// The descriptor is writable, or in error, and write interest is on.
    func writable()
}

/// The thread-local slot where a loop thread keeps its loop's identity (for ``EventLoop/inLoop``).
private let currentLoopKey: pthread_key_t = {
    var key = pthread_key_t()
    let rc = pthread_key_create(&key, nil)
    precondition(rc == 0, "RedisPubSub: cannot create a thread-local key (error \(rc))")
    return key
}()

/// A one-shot timer on an ``EventLoop``. Loop-confined: create, fire and cancel it on the loop.
final class LoopTimer {
    private(set) var body: (() -> Void)?
    init(_ body: @escaping () -> Void) { self.body = body }
    /// Stops the timer from firing. Idempotent.
    func cancel() { body = nil }
}

/// The thread that runs every hiredis call of the package.
///
/// Callers on any thread submit closures with ``execute(_:)``; the loop runs them in order, then polls its
/// descriptors and timers. A sleeping loop is woken through a pipe, written only when the loop is actually
/// asleep, so a burst of submissions costs one wake-up. Everything except `inbox` is confined to the loop thread.
final class EventLoop: @unchecked Sendable {
    // @unchecked Sendable because: `inbox` is Locked; every other stored property is touched only
    // on the loop thread (checked by `assertInLoop()`), and the pipe descriptors are immutable.

    /// The loop every connection of the process uses unless told otherwise. Started on first use, never stopped.
    static let shared = EventLoop(name: "RedisPubSub")

    /// A unit of work for the loop thread: a closure from ``execute(_:)``, or a Swift task's job when the loop
    /// serves as a task's preferred executor.
    private enum Work {
        case closure(@Sendable () -> Void)
        case job(UnownedJob)
    }

    private struct Inbox {
        var work: [Work] = []
        var sleeping = false
    }

    private let inbox = Locked(Inbox())
    private let wakeReadFD: Int32
    private let wakeWriteFD: Int32

    // Loop-confined state.
    private struct Registration {
        let fd: Int32
        let source: any EventLoopSource
        var read: Bool
        var write: Bool
    }
    private var registrations: [Registration] = []
    private var timers = TimerHeap()
    private var pollDescriptors: [pollfd] = []
    private var pollOwners: [ObjectIdentifier] = []
    private var spareWork: [Work] = []

    init(name: String) {
        var fds: [Int32] = [0, 0]
        let rc = pipe(&fds)
        precondition(rc == 0, "RedisPubSub: cannot create the event loop's wake-up pipe (errno \(errno))")
        for fd in fds {
            _ = fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK)
            _ = fcntl(fd, F_SETFD, FD_CLOEXEC)
        }
        wakeReadFD = fds[0]
        wakeWriteFD = fds[1]
        start(name: name)
    }

    private func start(name: String) {
        final class Box {
            let loop: EventLoop
            let name: String
            init(_ loop: EventLoop, _ name: String) { self.loop = loop; self.name = name }
        }
        // Unmanaged because: the new thread takes this +1 and releases it right away; the loop itself is
        // kept alive by the thread's `run()` frame, which never returns.
        let box = Unmanaged.passRetained(Box(self, name)).toOpaque()
        // An explicit stack, the same everywhere (macOS gives secondary threads only 512 KiB): tasks that prefer the
        // loop as their executor run their code on it.
        var attributes = pthread_attr_t()
        pthread_attr_init(&attributes)
        defer { pthread_attr_destroy(&attributes) }
        pthread_attr_setstacksize(&attributes, Self.stackSize)
        #if canImport(Darwin)
        var tid = pthread_t?.none
        let rc = pthread_create(&tid, &attributes, { raw in
            let box = Unmanaged<Box>.fromOpaque(raw).takeRetainedValue()
            pthread_setname_np(box.name)
            box.loop.run()
        }, box)
        #else
        var tid = pthread_t()
        let rc = pthread_create(&tid, &attributes, { raw in
            // Glibc's pthread_setname_np needs _GNU_SOURCE, which Swift's Glibc module lacks: the thread stays unnamed.
            let box = Unmanaged<Box>.fromOpaque(raw!).takeRetainedValue()
            box.loop.run()
        }, box)
        #endif
        precondition(rc == 0, "RedisPubSub: cannot start the event loop thread (error \(rc))")
    }

    /// The loop thread's stack: 8 MiB, Linux's usual default.
    static let stackSize = 8 << 20

    /// This loop's identity in the thread-local slot.
    private var identity: UnsafeMutableRawPointer {
        // Unmanaged because: only the address is used, as an identity; nothing is retained or released through it.
        Unmanaged.passUnretained(self).toOpaque()
    }

    /// Whether the caller runs on the loop thread (a thread-local read: cheap enough for hot paths).
    var inLoop: Bool {
        pthread_getspecific(currentLoopKey) == identity
    }

    /// Traps in debug builds when called off the loop thread.
    @inline(__always)
    func assertInLoop(file: StaticString = #fileID, line: UInt = #line) {
        assert(inLoop, "RedisPubSub: called off the event loop thread", file: file, line: line)
    }

    /// Runs `task` on the loop thread, after the tasks submitted before it. Callable from any thread; never blocks
    /// on the loop's work (only on a short critical section).
    func execute(_ task: @escaping @Sendable () -> Void) {
        submit(.closure(task))
    }

    private func submit(_ work: Work) {
        let wake = inbox.withLock { inbox -> Bool in
            inbox.work.append(work)
            if inbox.sleeping {
                inbox.sleeping = false
                return true
            }
            return false
        }
        if wake {
            var byte: UInt8 = 1
            _ = write(wakeWriteFD, &byte, 1)  // EAGAIN means a wake-up is already pending: fine.
        }
    }

    // MARK: Loop-confined API

    /// Sets the interest in `fd`'s readiness. Both `false` unregisters the descriptor (and releases `source`).
    func setInterest(fd: Int32, source: any EventLoopSource, read: Bool, write: Bool) {
        assertInLoop()
        if let index = registrations.firstIndex(where: { $0.fd == fd }) {
            if !read && !write {
                registrations.remove(at: index)
            } else {
                registrations[index] = Registration(fd: fd, source: source, read: read, write: write)
            }
        } else if read || write {
            registrations.append(Registration(fd: fd, source: source, read: read, write: write))
        }
    }

    /// Calls `body` on the loop at `deadline` (or on the next turn if it already passed), unless cancelled first.
    func scheduleTimer(at deadline: ContinuousClock.Instant, _ body: @escaping () -> Void) -> LoopTimer {
        assertInLoop()
        let timer = LoopTimer(body)
        timers.insert(deadline: deadline, timer: timer)
        return timer
    }

    // MARK: The loop

    private func run() -> Never {
        var blocked = sigset_t()
        sigemptyset(&blocked)
        sigaddset(&blocked, SIGPIPE)
        // hiredis writes with write(2): a closed peer must give EPIPE, not kill the process.
        pthread_sigmask(SIG_BLOCK, &blocked, nil)
        pthread_setspecific(currentLoopKey, identity)

        while true {
            runTasks()
            let timeout: Int32
            if let next = timers.nextDeadline {
                timeout = Self.milliseconds(until: next, from: .now)
            } else {
                timeout = -1
            }
            let sleep = inbox.withLock { inbox -> Bool in
                guard inbox.work.isEmpty else { return false }
                inbox.sleeping = true
                return true
            }
            poll(timeout: sleep ? timeout : 0, wasSleeping: sleep)
            // Timers fire after the turn's I/O: tasks on the loop may have run long, and a reply that arrived
            // meanwhile must be read before its deadline is judged.
            fireTimers(now: .now)
        }
    }

    /// Runs the work submitted so far, and what that work submits in turn (a resumed task publishing again, the
    /// connection draining what it published), up to a few rounds: then I/O gets its turn.
    private func runTasks() {
        for _ in 0..<4 {
            // Swap buffers so the critical section is O(1) and the array's storage is reused. The spare is moved out
            // (not copied), so the inbox gets uniquely referenced storage and appends to it do not copy.
            var batch: [Work] = []
            swap(&batch, &spareWork)
            inbox.withLock { inbox in swap(&batch, &inbox.work) }
            if batch.isEmpty {
                spareWork = batch
                return
            }
            for work in batch {
                switch work {
                case .closure(let body): body()
                case .job(let job): job.runSynchronously(on: asUnownedTaskExecutor())
                }
            }
            batch.removeAll(keepingCapacity: true)
            spareWork = batch
        }
    }

    private func fireTimers(now: ContinuousClock.Instant) {
        while let timer = timers.popDue(now: now) {
            if let body = timer.body {
                timer.cancel()  // one-shot
                body()
            }
        }
    }

    /// Polls once and dispatches what is ready. `wasSleeping`: `sleeping` was set for this poll, and is cleared as
    /// soon as it returns, so work submitted while dispatching (a resumed task, say) needs no wake-up write.
    private func poll(timeout: Int32, wasSleeping: Bool) {
        pollDescriptors.removeAll(keepingCapacity: true)
        pollOwners.removeAll(keepingCapacity: true)
        pollDescriptors.append(pollfd(fd: wakeReadFD, events: Int16(POLLIN), revents: 0))
        pollOwners.append(ObjectIdentifier(self))
        for registration in registrations {
            var events: Int16 = 0
            if registration.read { events |= Int16(POLLIN) }
            if registration.write { events |= Int16(POLLOUT) }
            pollDescriptors.append(pollfd(fd: registration.fd, events: events, revents: 0))
            pollOwners.append(ObjectIdentifier(registration.source))
        }
        let count = pollDescriptors.withUnsafeMutableBufferPointer { buffer in
            systemPoll(buffer.baseAddress!, nfds_t(buffer.count), timeout)
        }
        if wasSleeping {
            inbox.withLock { $0.sleeping = false }
        }
        if count < 0 {
            let error = errno
            switch error {
            case EINTR:
                return  // a signal: the next turn re-polls
            case EFAULT, EINVAL:
                // The descriptor array is ours and short: either is a bug in this loop, not a condition to survive.
                preconditionFailure("RedisPubSub: poll(2) failed with errno \(error)")
            default:
                // ENOMEM or something new: back off instead of spinning, and try again.
                usleep(1_000)
                return
            }
        }
        guard count > 0 else { return }  // the timeout: the next turn fires the timers

        if pollDescriptors[0].revents != 0 {
            var scratch = [UInt8](repeating: 0, count: 64)
            while read(wakeReadFD, &scratch, scratch.count) > 0 {}
        }
        let errorMask = Int16(POLLERR) | Int16(POLLHUP) | Int16(POLLNVAL)
        for index in 1..<pollDescriptors.count {
            let descriptor = pollDescriptors[index]
            guard descriptor.revents != 0 else { continue }
            // A source may have closed (and another reused its fd) earlier in this same turn: deliver only to the
            // source that asked.
            if let registration = currentRegistration(fd: descriptor.fd, owner: pollOwners[index]),
               registration.write,
               descriptor.revents & (Int16(POLLOUT) | errorMask) != 0
            {
                registration.source.writable()
            }
            if let registration = currentRegistration(fd: descriptor.fd, owner: pollOwners[index]),
               registration.read,
               descriptor.revents & (Int16(POLLIN) | errorMask) != 0
            {
                registration.source.readable()
            }
        }
    }

    private func currentRegistration(fd: Int32, owner: ObjectIdentifier) -> Registration? {
        guard let registration = registrations.first(where: { $0.fd == fd }),
              ObjectIdentifier(registration.source) == owner
        else { return nil }
        return registration
    }

    private static func milliseconds(until deadline: ContinuousClock.Instant, from now: ContinuousClock.Instant) -> Int32 {
        guard deadline > now else { return 0 }
        let (seconds, attoseconds) = (deadline - now).components
        guard seconds < Int64(Int32.max / 1000) else { return Int32.max }  // "no timeout" values must not overflow
        let ms = seconds * 1000 + (attoseconds + 999_999_999_999_999) / 1_000_000_000_000_000  // round up
        return Int32(clamping: ms)
    }
}

/// Tasks can prefer the loop thread as their executor (``RedisConnection/taskExecutor``): their code then runs between
/// the loop's I/O turns, a reply resumes its waiting task without waking another thread, and the task's next command is
/// written in the same turn.
extension EventLoop: TaskExecutor {
    func enqueue(_ job: consuming ExecutorJob) {
        submit(.job(UnownedJob(job)))
    }
}

#if canImport(Darwin)
private func systemPoll(_ fds: UnsafeMutablePointer<pollfd>, _ count: nfds_t, _ timeout: Int32) -> Int32 {
    Darwin.poll(fds, count, timeout)
}
#elseif canImport(Musl)
private func systemPoll(_ fds: UnsafeMutablePointer<pollfd>, _ count: nfds_t, _ timeout: Int32) -> Int32 {
    Musl.poll(fds, count, timeout)
}
#else
private func systemPoll(_ fds: UnsafeMutablePointer<pollfd>, _ count: nfds_t, _ timeout: Int32) -> Int32 {
    Glibc.poll(fds, count, timeout)
}
#endif

/// The loop's timers by deadline, ties in insertion order: swift-collections' `Heap`, with cancelled timers dropped
/// when they reach the top.
struct TimerHeap {
    private struct Entry: Comparable {
        let deadline: ContinuousClock.Instant
        let sequence: UInt64
        let timer: LoopTimer

        static func < (a: Entry, b: Entry) -> Bool {
            a.deadline < b.deadline || (a.deadline == b.deadline && a.sequence < b.sequence)
        }

        static func == (a: Entry, b: Entry) -> Bool { a.deadline == b.deadline && a.sequence == b.sequence }
    }

    private var entries = Heap<Entry>()
    private var sequence: UInt64 = 0
    /// When the heap holds this many entries, the cancelled ones are swept out (a cancelled timer far in the future
    /// would otherwise stay until its deadline came to the top).
    private var sweepAt = 1024

    var nextDeadline: ContinuousClock.Instant? {
        mutating get {
            dropCancelledHead()
            return entries.min?.deadline
        }
    }

    mutating func insert(deadline: ContinuousClock.Instant, timer: LoopTimer) {
        sequence &+= 1
        entries.insert(Entry(deadline: deadline, sequence: sequence, timer: timer))
        if entries.count >= sweepAt {
            entries = Heap(entries.unordered.filter { $0.timer.body != nil })
            sweepAt = max(1024, entries.count * 2)  // amortised: a sweep per doubling
        }
    }

    /// Entries held, cancelled ones included (for tests).
    var count: Int { entries.count }

    mutating func popDue(now: ContinuousClock.Instant) -> LoopTimer? {
        dropCancelledHead()
        guard let first = entries.min, first.deadline <= now else { return nil }
        return entries.removeMin().timer
    }

    private mutating func dropCancelledHead() {
        while let first = entries.min, first.timer.body == nil { _ = entries.removeMin() }
    }
}
