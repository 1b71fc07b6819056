import Foundation
#if canImport(Glibc)
import Glibc
#endif

extension Process {
    /// The exit status once the process has ended (its signal number if a signal ended it), or `nil` while it runs.
    /// Once it returned a status, the child is reaped: ask no more (keep the status).
    ///
    /// Reaps the child itself with `waitpid(WNOHANG)` instead of trusting Foundation's `isRunning` and
    /// `waitUntilExit()`: on Linux, Foundation can miss a child's exit when many processes start and stop at once
    /// (seen in CI: a SIGKILLed redis-server left a zombie nobody reaped, and the two test threads blocked in
    /// `waitUntilExit()` stopped the whole run).
    func endedStatus() -> Int32? {
        var status: Int32 = 0
        let result = waitpid(processIdentifier, &status, WNOHANG)
        if result == processIdentifier {
            return status & 0x7F == 0 ? (status >> 8) & 0xFF : status & 0x7F
        }
        if result == -1 && errno == ECHILD {  // Foundation reaped it first: it has the status
            return isRunning ? nil : terminationStatus
        }
        return nil
    }

    /// Waits up to `timeout` for the process to end (without blocking in Foundation); its status, or `nil`.
    @discardableResult
    func waitForExit(timeout: Duration = .seconds(30)) -> Int32? {
        let deadline = ContinuousClock.now + timeout
        while true {
            if let status = endedStatus() { return status }
            guard ContinuousClock.now < deadline else { return nil }
            usleep(1_000)
        }
    }

    /// The same for async callers: sleeps between checks instead of holding a thread of the task pool.
    func waitForExit(timeout: Duration = .seconds(30)) async -> Int32? {
        let deadline = ContinuousClock.now + timeout
        while true {
            if let status = endedStatus() { return status }
            guard ContinuousClock.now < deadline else { return nil }
            try? await Task.sleep(for: .milliseconds(5))
        }
    }
}
