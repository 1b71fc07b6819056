import Testing
@testable import RedisPubSub

@Suite("CommandInbox: submissions and the bound on outstanding work")
struct CommandInboxTests {
    /// A submission nobody waits for (the tests only count).
    func submission(bytes: Int, commands: Int = 1) -> Submission {
        Submission(bytes: [UInt8](repeating: 0, count: bytes), request: .cancellable(Pending()), commands: commands)
    }

    func isRejected(_ admission: CommandInbox.Admission, _ code: RedisError.Code) -> Bool {
        if case .rejected(let error) = admission { error.code == code } else { false }
    }

    @Test func theFirstSubmissionSchedulesTheLoopAndTheRestQueue() {
        let inbox = CommandInbox(limits: .init(commands: 10, bytes: 1000))
        guard case .schedule = inbox.admit(submission(bytes: 10)) else { Issue.record("not scheduled"); return }
        guard case .queued(let waiting) = inbox.admit(submission(bytes: 10)), waiting == 2 else {
            Issue.record("not queued behind the first")
            return
        }
        var taken: [Submission] = []
        #expect(inbox.take(into: &taken, releasing: .none) == nil)
        #expect(taken.count == 2)
        guard case .schedule = inbox.admit(submission(bytes: 10)) else { Issue.record("taking should reset the schedule"); return }
    }

    @Test func commandsAndBytesAreBoundedAndGivenBack() {
        let inbox = CommandInbox(limits: .init(commands: 3, bytes: 100))
        _ = inbox.admit(submission(bytes: 10, commands: 2))
        _ = inbox.admit(submission(bytes: 10))
        #expect(inbox.outstanding == (3, 20))
        #expect(isRejected(inbox.admit(submission(bytes: 1)), .overloaded))  // the fourth command
        var taken: [Submission] = []
        _ = inbox.take(into: &taken, releasing: .none)  // written: still outstanding until answered
        #expect(isRejected(inbox.admit(submission(bytes: 1)), .overloaded))
        inbox.release(CommandCost(commands: 2, bytes: 10))  // the batch's replies arrived
        #expect(inbox.outstanding == (1, 10))
        #expect(isRejected(inbox.admit(submission(bytes: 95)), .overloaded))  // past the byte bound
        guard case .schedule = inbox.admit(submission(bytes: 80)) else { Issue.record("within both bounds"); return }
        #expect(inbox.outstanding == (2, 90))
    }

    @Test func oneCallLargerThanTheBoundGoesWhenNothingElseWaits() {
        let inbox = CommandInbox(limits: .init(commands: 2, bytes: 100))
        guard case .schedule = inbox.admit(submission(bytes: 500, commands: 5)) else {
            Issue.record("a lone large call must be admitted")
            return
        }
        #expect(isRejected(inbox.admit(submission(bytes: 1)), .overloaded))
    }

    @Test func closingRefusesNewWorkAndHandsBackWhatWaited() {
        let inbox = CommandInbox(limits: .init(commands: 10, bytes: 1000))
        _ = inbox.admit(submission(bytes: 10))
        inbox.refuseNew(RedisError(.connectionClosed, "closing"))
        #expect(isRejected(inbox.admit(submission(bytes: 1)), .connectionClosed))
        let leftovers = inbox.close(RedisError(.connectionClosed, "closed"))
        #expect(leftovers.count == 1)
        #expect(inbox.outstanding == (0, 0))
        #expect(inbox.closedError?.message == "closing")  // the first reason stays
    }
}
