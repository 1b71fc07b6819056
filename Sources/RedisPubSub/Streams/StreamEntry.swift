#if canImport(FoundationEssentials)
public import FoundationEssentials
#else
public import Foundation
#endif

/// One entry of a stream as a ``StreamReader`` delivers it: its stream, ID and fields. Reading without a group
/// settles nothing: there is no acknowledgement.
public struct StreamEntry: StreamEntryContent, Hashable {
    /// The stream the entry belongs to.
    public let stream: RedisName
    /// The entry's ID.
    public let id: StreamEntryID
    /// The entry's fields, in order.
    public let fields: [StreamField]

    /// An entry of `stream`.
    public init(stream: RedisName, id: StreamEntryID, fields: [StreamField]) {
        self.stream = stream
        self.id = id
        self.fields = fields
    }
}

extension StreamEntry: CustomStringConvertible {
    /// E.g. `orders 1700000000000-0: "order 42 paid"` (the payload, else the fields).
    public var description: String { "\(stream) \(id): \(body)" }
}

/// What ``StreamEntry`` and ``StreamMessage`` have in common: a stream entry's ID and fields, and the ways to read
/// its payload.
public protocol StreamEntryContent: Sendable {
    /// The stream the entry belongs to.
    var stream: RedisName { get }
    /// The entry's ID.
    var id: StreamEntryID { get }
    /// The entry's fields, in order.
    var fields: [StreamField] { get }
}

extension StreamEntryContent {
    /// The value of the first field named `name`, or `nil`.
    public func field(_ name: RedisName) -> [UInt8]? {
        fields.first { $0.name == name }?.value
    }

    /// The `payload` field (``Publisher/payloadField``), as ``Publisher/append(_:to:trim:)`` writes it; empty when
    /// the entry has no such field (one appended by another client with other fields: read ``fields``).
    public var payload: [UInt8] { field(Publisher.payloadField) ?? [] }
    /// The payload as UTF-8 text (invalid sequences become U+FFFD).
    public var string: String { String(decoding: payload, as: UTF8.self) }
    /// The payload as `Data`.
    public var data: Data { Data(payload) }

    /// Decodes the payload as JSON.
    ///
    /// - Throws: ``MessageDecodingError`` whose ``MessageDecodingError/message`` carries the stream's name as its
    ///   channel and the payload.
    public func decode<T: Decodable>(_ type: T.Type = T.self, using decoder: JSONDecoder = JSONDecoder()) throws(MessageDecodingError) -> T {
        try Message(channel: stream.bytes, payload: payload).decode(T.self, using: decoder)
    }

    /// The payload quoted and abbreviated, else the fields: the body of a description.
    var body: String {
        field(Publisher.payloadField).map(quotedForDescription) ?? fields.map(\.description).joined(separator: " ")
    }
}
