import Testing
@testable import RedisPubSub

@Suite("RedisError")
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

    @Test func replyShapesCarryNoPayload() {
        let secret: RedisValue = .array([.bulkString(Array("card 4111 1111".utf8)), .simpleString("token-x"), .integer(5)])
        #expect(secret.shape == "an array of 3 elements (a bulk string of 14 bytes, a simple string of 7 bytes, an integer)")
        #expect(!secret.shape.contains("4111") && !secret.shape.contains("token"))
    }
}
