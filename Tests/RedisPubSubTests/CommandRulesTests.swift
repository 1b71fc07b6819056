import Testing
@testable import RedisPubSub

@Suite("CommandRules: what a shared, reconnecting connection takes")
struct CommandRulesTests {
    func refusal(_ command: [RedisArgument]) -> RedisError? {
        do {
            try CommandRules.checkShared(command)
            return nil
        } catch {
            return error
        }
    }

    @Test(arguments: [
        (["SUBSCRIBE", "ch"], "Subscriber"), (["psubscribe", "p*"], "Subscriber"), (["SSubscribe", "s"], "Subscriber"),
        (["UNSUBSCRIBE"], "Subscriber"), (["punsubscribe"], "Subscriber"), (["SUNSUBSCRIBE"], "Subscriber"),
        (["MONITOR"], "stream"), (["MULTI"], "transaction(_:)"), (["exec"], "transaction(_:)"),
        (["DISCARD"], "transaction(_:)"), (["WATCH", "k"], "EVAL"), (["UNWATCH"], "EVAL"),
        (["SELECT", "2"], "RedisConfiguration.database"), (["AUTH", "pw"], "RedisConfiguration.username"),
        (["HELLO", "3"], "RESP2"), (["HELLO", "2"], "RESP2"), (["reset"], "AUTH, SELECT"),
        (["CLIENT", "setname", "x"], "RedisConfiguration.clientName"), (["CLIENT", "reply", "SKIP"], "CLIENT REPLY"),
        (["BLPOP", "k", "0"], "sendBlocking"), (["brpop", "k", "1"], "sendBlocking"), (["BLMOVE", "a", "b", "LEFT", "RIGHT", "0"], "sendBlocking"),
        (["BZPOPMIN", "z", "1"], "sendBlocking"), (["BLMPOP", "1", "1", "k", "LEFT"], "sendBlocking"),
        (["XREAD", "BLOCK", "0", "STREAMS", "s", "$"], "sendBlocking"),
        (["XREADGROUP", "GROUP", "g", "c", "COUNT", "1", "block", "100", "STREAMS", "s", ">"], "sendBlocking"),
        (["WAIT", "1", "0"], "sendBlocking"), (["WAITAOF", "1", "0", "0"], "sendBlocking"),
    ] as [([RedisArgument], String)])
    func refusedCommandsNameTheAlternative(command: [RedisArgument], alternative: String) {
        let error = refusal(command)
        #expect(error?.code == .invalidArgument)
        #expect(error?.message.contains(alternative) == true, "\(error?.message ?? "accepted")")
    }

    @Test func ordinaryCommandsPass() {
        for command: [RedisArgument] in [
            ["GET", "k"], ["CLIENT", "ID"], ["CLIENT", "TRACKING", "on", "REDIRECT", "5"], ["XREAD", "COUNT", "1", "STREAMS", "s", "0"],
            ["XREAD", "STREAMS", "block", "0"],  // "block" is a stream's name here, after STREAMS
            ["LPOP", "k"], ["PUBLISH", "c", "m"], ["SET", "AUTH", "x"], ["EXISTS", "MULTI"],
        ] {
            #expect(refusal(command) == nil, "\(command.map { String(decoding: $0.bytes, as: UTF8.self) })")
        }
        #expect(refusal([])?.code == .invalidArgument)
    }

    @Test func blockingCommandsTellHowLongTheyMayBlock() throws {
        #expect(try CommandRules.use(of: ["BLPOP", "a", "b", "2.5"]) == .blocking(.milliseconds(2500)))
        #expect(try CommandRules.use(of: ["BLPOP", "a", "0"]) == .blocking(nil))
        #expect(try CommandRules.use(of: ["BRPOPLPUSH", "a", "b", "3"]) == .blocking(.seconds(3)))
        #expect(try CommandRules.use(of: ["BZMPOP", "4", "1", "z", "MIN"]) == .blocking(.seconds(4)))
        #expect(try CommandRules.use(of: ["XREADGROUP", "GROUP", "g", "c", "BLOCK", "1500", "STREAMS", "s", ">"]) == .blocking(.milliseconds(1500)))
        #expect(try CommandRules.use(of: ["WAIT", "1", "250"]) == .blocking(.milliseconds(250)))
        #expect(try CommandRules.use(of: ["BLPOP", "a", "not-a-number"]) == .blocking(nil))
        #expect(try CommandRules.use(of: ["BLPOP", "a", "1e300"]) == .blocking(.seconds(1_000_000_000)))
        #expect(try CommandRules.use(of: ["GET", "k"]) == .ordinary)
    }
}
