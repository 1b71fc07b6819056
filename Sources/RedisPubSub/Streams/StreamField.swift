/// One field of a stream entry: a name and a value, both bytes as the server keeps them.
public struct StreamField: Hashable, Sendable, CustomStringConvertible {
    /// The field's name.
    public let name: RedisName
    /// The field's value, byte for byte.
    public let value: [UInt8]

    /// Creates a field.
    public init(name: RedisName, value: [UInt8]) {
        self.name = name
        self.value = value
    }

    /// The value as UTF-8 text (invalid sequences become U+FFFD).
    public var string: String { String(decoding: value, as: UTF8.self) }

    /// `name=value`, with values over 64 bytes abbreviated.
    public var description: String {
        "\(name)=" + quotedForDescription(value)
    }
}
