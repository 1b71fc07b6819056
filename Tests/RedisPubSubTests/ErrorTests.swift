import Testing
@testable import RedisPubSub

@Suite("RedisError and command guards")
struct ErrorTests {
    @Test func serverErrorsAreClassifiedByPrefix() {
        #expect(RedisError.server("NOPERM this user has no permissions").code == .permissionDenied)
        #expect(RedisError.server("WRONGPASS invalid username-password pair").code == .authenticationFailed)
        #expect(RedisError.server("NOAUTH Authentication required.").code == .authenticationFailed)
        let plain = RedisError.server("ERR unknown command 'FOO'")
        #expect(plain.code == .serverError)
        #expect(plain.message == "ERR unknown command 'FOO'")
        #expect(plain.description == "serverError: ERR unknown command 'FOO'")
    }

    @Test(arguments: ["SUBSCRIBE", "psubscribe", "SSubscribe", "UNSUBSCRIBE", "punsubscribe", "SUNSUBSCRIBE", "MONITOR"])
    func subscriptionCommandsAreReservedForSubscriber(name: String) {
        #expect { try RedisConnection.checkAllowed([RedisArgument(name), "ch"]) } throws: { error in
            (error as? RedisError)?.code == .invalidArgument
        }
    }

    @Test func ordinaryCommandsPass() throws {
        try RedisConnection.checkAllowed(["GET", "k"])
        try RedisConnection.checkAllowed(["HELLO", "2"])
        #expect(throws: RedisError.self) { try RedisConnection.checkAllowed(["HELLO", "3"]) }
        #expect(throws: RedisError.self) { try RedisConnection.checkAllowed([]) }
        #expect(throws: RedisError.self) { try RedisConnection.checkAllowed(["CLIENT", "reply", "SKIP"]) }
        #expect(throws: RedisError.self) { try RedisConnection.checkAllowed(["reset"]) }
        try RedisConnection.checkAllowed(["CLIENT", "ID"])
    }
}
