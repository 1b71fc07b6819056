/// Where a command's keys are, from the server's own command table (`COMMAND INFO`), so that a command sent to a
/// cluster goes to the primary serving its keys' slot without the caller naming the key.
///
/// Redis describes most commands by the position of their first and last key and the step between keys (`GET key`:
/// 1, 1, 1; `MSET k v k v`: 1, -1, 2). Commands whose keys move with their arguments (`EVAL script numkeys key...`,
/// `XREAD ... STREAMS key... id...`) are flagged `movablekeys`: the server finds those itself (`COMMAND GETKEYS`).
/// Container commands (`XINFO`, `OBJECT`) describe each subcommand (`xinfo|stream`) on its own.
///
/// Hand-written rather than a table of the package's own: the server's table is always the one of the server
/// running, modules' commands included.
enum ClusterCommandKeys: Sendable, Equatable {
    /// No key: any node serves it.
    case none
    /// Keys at `first`, `first + step`, ... up to `last` (negative: counted from the end, -1 the last argument).
    case positions(first: Int, last: Int, step: Int)
    /// Only the server can tell (`COMMAND GETKEYS`).
    case movable
    /// `EVAL script numkeys key...` and its kin: the count at `countAt`, the keys right after it.
    case counted(countAt: Int)
    /// A container: the subcommand (the next argument) has its own entry, `name|subcommand`.
    case container

    /// The keys of `command`; nil for ``movable`` and ``container`` (the server, or the subcommand's entry, tells).
    func keys(in command: [RedisArgument]) -> [RedisArgument]? {
        switch self {
        case .none:
            return []
        case .movable, .container:
            return nil
        case .counted(let countAt):
            guard countAt < command.count, let count = Int(String(decoding: command[countAt].bytes, as: UTF8.self)),
                  count >= 0, count <= command.count - countAt - 1
            else { return [] }  // arguments the server will refuse: any node says so
            return Array(command[(countAt + 1)..<(countAt + 1 + count)])
        case .positions(let first, let last, let step):
            let end = last < 0 ? command.count + last : last
            guard first > 0, step > 0, first < command.count else { return [] }
            return stride(from: first, through: min(end, command.count - 1), by: step).map { command[$0] }
        }
    }

    /// The scripting commands, whose keys follow their count: read here, with no `COMMAND GETKEYS` round trip (and
    /// no script sent twice) per call.
    static let scripted: [String: ClusterCommandKeys] = Dictionary(
        uniqueKeysWithValues: ["eval", "evalsha", "eval_ro", "evalsha_ro", "fcall", "fcall_ro"].map { ($0, .counted(countAt: 2)) })

    /// Reads one entry of a `COMMAND INFO` reply: `[name, arity, flags, first, last, step, ...]`, or nil for a
    /// command the server does not know.
    init?(info entry: RedisValue) {
        guard let fields = entry.array, fields.count >= 6, let flags = fields[2].array,
              let first = fields[3].int, let last = fields[4].int, let step = fields[5].int
        else { return nil }
        let subcommands = fields.count > 9 ? fields[9].array ?? [] : []
        if flags.contains(where: { $0.string == "movablekeys" }) {
            self = .movable
        } else if first > 0 {
            self = .positions(first: first, last: last, step: step)
        } else if !subcommands.isEmpty {
            self = .container
        } else {
            self = .none
        }
    }
}
