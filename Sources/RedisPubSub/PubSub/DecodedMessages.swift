#if canImport(FoundationEssentials)
public import FoundationEssentials
#else
public import Foundation
#endif

extension Subscription {
    /// The messages decoded as JSON into `T`.
    ///
    /// A payload that does not decode never ends the sequence. With `onFailure` it is reported there and skipped, so a
    /// plain `for try await` loop goes on:
    ///
    /// ```swift
    /// for try await event in subscription.decoded(as: Event.self, onFailure: { logger.warning("\($0)") }) { ... }
    /// ```
    ///
    /// Without `onFailure`, `next()` throws a ``MessageDecodingError`` for it, and the iterator stays usable: call
    /// `next()` again to go on with the following message.
    public func decoded<T: Decodable>(
        as type: T.Type,
        using decoder: JSONDecoder = JSONDecoder(),
        onFailure: (@Sendable (MessageDecodingError) -> Void)? = nil
    ) -> DecodedMessages<T> {
        DecodedMessages(subscription: self, decoder: decoder, onFailure: onFailure)
    }
}

/// A subscription's messages decoded into `T`; see ``Subscription/decoded(as:using:onFailure:)``.
public struct DecodedMessages<T: Decodable>: AsyncSequence, Sendable {
    /// Each element is one decoded message.
    public typealias Element = T

    let subscription: Subscription
    let decoder: JSONDecoder
    let onFailure: (@Sendable (MessageDecodingError) -> Void)?

    /// The iterator; the subscription ends when it is released.
    public func makeAsyncIterator() -> Iterator {
        Iterator(messages: subscription.makeAsyncIterator(), decoder: decoder, onFailure: onFailure)
    }

    /// Decodes each message as it is taken.
    public struct Iterator: AsyncIteratorProtocol {
        var messages: Subscription.Iterator
        let decoder: JSONDecoder
        let onFailure: (@Sendable (MessageDecodingError) -> Void)?

        /// The next decoded message; `nil` when the subscription ended.
        ///
        /// - Throws: ``MessageDecodingError`` for one message that did not decode (when there is no `onFailure`;
        ///   the iterator goes on afterwards), ``RedisError`` when the subscription failed.
        public mutating func next() async throws -> T? {
            try await next(isolation: nil)
        }

        /// The next decoded message, staying on the caller's actor; see ``next()``.
        public mutating func next(isolation actor: isolated (any Actor)? = #isolation) async throws -> T? {
            while let message = try await messages.next(isolation: actor) {
                do {
                    return try message.decode(T.self, using: decoder)
                } catch {
                    guard let onFailure else { throw error }
                    onFailure(error)
                }
            }
            return nil
        }
    }
}
