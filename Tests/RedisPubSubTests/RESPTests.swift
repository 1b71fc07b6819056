import Testing
@testable import RedisPubSub

@Suite("RESP encoding and hiredis reply decoding")
struct RESPTests {
    @Test func encodesArraysOfBulkStrings() {
        let bytes = RESP.encode(["SET", "k", RedisArgument([0, 255, 13, 10]), 42, -7])
        let expected: [UInt8] = Array("*5\r\n$3\r\nSET\r\n$1\r\nk\r\n$4\r\n".utf8) + [0, 255, 13, 10]
            + Array("\r\n$2\r\n42\r\n$2\r\n-7\r\n".utf8)
        #expect(bytes == expected)
    }

    @Test func encodesLengthsOfEveryMagnitude() throws {
        for length in [0, 9, 10, 99, 100, 12_345, 1 << 20] {
            let bytes = RESP.encode([RedisArgument([UInt8](repeating: 7, count: length))])
            #expect(bytes.starts(with: Array("*1\r\n$\(length)\r\n".utf8)))
            #expect(bytes.count == "*1\r\n$\(length)\r\n".utf8.count + length + 2)
        }
    }

    @Test func unicodeIsSentAsUTF8() {
        #expect(RESP.encode(["é✓"]) == Array("*1\r\n$5\r\né✓\r\n".utf8))
    }

    @Test func decodesEveryRESP2Type() throws {
        let input = "+OK\r\n-ERR bad\r\n:-12\r\n$3\r\nabc\r\n$-1\r\n*-1\r\n$0\r\n\r\n*3\r\n:1\r\n*1\r\n+x\r\n-E nested\r\n"
        let values = try ReplyParser.parse(Array(input.utf8))
        #expect(values == [
            .simpleString("OK"), .error("ERR bad"), .integer(-12), .bulkString(Array("abc".utf8)), .null, .null,
            .bulkString([]), .array([.integer(1), .array([.simpleString("x")]), .error("E nested")]),
        ])
    }

    @Test func bulkStringsAreBinarySafe() throws {
        let payload: [UInt8] = [0, 0xFF, 0xFE, 13, 10, 0]
        let values = try ReplyParser.parse(Array("$6\r\n".utf8) + payload + Array("\r\n".utf8))
        #expect(values == [.bulkString(payload)])
    }

    @Test func incompleteInputYieldsNothingYet() throws {
        #expect(try ReplyParser.parse(Array("$10\r\nabc".utf8)) == [])
    }

    @Test func garbageIsAProtocolError() {
        #expect { try ReplyParser.parse(Array("?what\r\n".utf8)) } throws: { error in
            (error as? RedisError)?.code == .protocolError
        }
    }

    @Test func valueConveniences() {
        #expect(RedisValue.bulkString(Array("12".utf8)).int == 12)
        #expect(RedisValue.integer(3).string == "3")
        #expect(RedisValue.simpleString("OK").bytes == Array("OK".utf8))
        #expect(RedisValue.null.isNull)
        #expect(RedisValue.array([.null]).array == [.null])
        #expect(RedisValue.integer(1).array == nil)
        #expect(RedisValue.bulkString([UInt8](repeating: 65, count: 100)).description.contains("(100 bytes)"))
    }
}
