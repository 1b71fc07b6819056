#if canImport(FoundationEssentials)
public import FoundationEssentials
#else
public import Foundation
#endif

/// A message body that is published byte for byte: `String` (its UTF-8), `Substring`, `[UInt8]`,
/// `ArraySlice<UInt8>`, `Data`, or ``RedisArgument``.
///
/// Every byte-array expression is a payload, literals included: `publish([0x00, 0xFF], to:)` and
/// `publish(Array(text.utf8), to:)` send those bytes. Values that are not bytes (an `Int`, an optional, a struct) are
/// not payloads and do not compile; encode them, for JSON with ``Publisher/publish(json:to:encoder:)``. Conform a
/// buffer type of your own by returning its bytes as a ``RedisArgument``.
public protocol RedisPayload: RedisArgumentConvertible {}

extension String: RedisPayload {}
extension Substring: RedisPayload {}
extension Array: RedisPayload where Element == UInt8 {}
extension Data: RedisPayload {}
extension RedisArgument: RedisPayload {}

extension ArraySlice: RedisArgumentConvertible where Element == UInt8 {
    /// The bytes as they are.
    public var redisArgument: RedisArgument { RedisArgument(Array(self)) }
}

extension ArraySlice: RedisPayload where Element == UInt8 {}
