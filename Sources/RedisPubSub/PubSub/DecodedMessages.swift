#if canImport(FoundationEssentials)
public import FoundationEssentials
#else
public import Foundation
#endif

extension Subscription {
    /// The messages decoded as JSON into `T`, each as a `Result`: a payload that does not decode is a `.failure`
    /// holding the message, and the loop goes on with the next one.
    ///
    /// ```swift
    /// for try await result in subscription.decoded(as: Event.self) {
    ///     switch result {
    ///     case .success(let event): handle(event)
    ///     case .failure(let error): logger.warning("\(error)")   // error.message is the message as received
    ///     }
    /// }
    /// ```
    ///
    /// `try result.get()` instead ends the loop at the first message that does not decode, when that is what you want.
    public func decoded<T: Decodable>(as type: T.Type, using decoder: JSONDecoder = JSONDecoder()) -> DecodedMessages<T> {
        DecodedMessages(subscription: self, decoder: decoder)
    }
}

/// A subscription's messages decoded into `T`; see ``Subscription/decoded(as:using:)``.
public struct DecodedMessages<T: Decodable>: AsyncSequence, Sendable {
    /// Each element is one message, decoded or not.
    public typealias Element = Result<T, MessageDecodingError>
    /// Every error is a ``RedisError`` of the subscription (a message that does not decode is an element).
    public typealias Failure = RedisError

    let subscription: Subscription
    let decoder: JSONDecoder

    /// The iterator; see ``Subscription/makeAsyncIterator()``.
    public func makeAsyncIterator() -> Iterator {
        Iterator(messages: subscription.makeAsyncIterator(), decoder: decoder)
    }

    /// Decodes each message as it is taken.
    public struct Iterator: AsyncIteratorProtocol {
        var messages: Subscription.Iterator
        let decoder: JSONDecoder

        /// The next message, decoded or with its decoding error; `nil` when the subscription ended.
        ///
        /// - Throws: as ``Subscription/Iterator/next()``.
        public mutating func next() async throws(RedisError) -> Result<T, MessageDecodingError>? {
            try await next(isolation: nil)
        }

        /// The next message, staying on the caller's actor; see ``next()``.
        public mutating func next(
            isolation actor: isolated (any Actor)? = #isolation
        ) async throws(RedisError) -> Result<T, MessageDecodingError>? {
            guard let message = try await messages.next(isolation: actor) else { return nil }
            do {
                return .success(try message.decode(T.self, using: decoder))
            } catch {
                return .failure(error)
            }
        }
    }
}

@available(*, unavailable, message: "an iterator belongs to the task that iterates")
extension DecodedMessages.Iterator: Sendable {}
