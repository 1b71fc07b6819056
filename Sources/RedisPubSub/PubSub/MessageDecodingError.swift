/// A message whose payload could not be decoded as the type asked for. The subscription goes on.
public struct MessageDecodingError: Error, Sendable, CustomStringConvertible {
    /// The message as received.
    public let message: Message
    /// The decoder's error.
    public let underlying: any Error

    /// Creates the error.
    public init(message: Message, underlying: any Error) {
        self.message = message
        self.underlying = underlying
    }

    /// Names the channel and the payload's size, and the decoder's reason.
    public var description: String {
        "cannot decode a \(message.payload.count)-byte message on '\(message.channel)': \(underlying)"
    }
}
