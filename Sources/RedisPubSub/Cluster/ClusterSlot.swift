/// The hash slot of a key or sharded channel in a Redis Cluster, as `CLUSTER KEYSLOT` computes it: CRC16 (XMODEM) of
/// the name, or of its hash tag (the bytes between the first `{` and the next `}`, when that is not empty), mod 16384.
///
/// Hand-written: nothing in the package mirror computes it, and it is one table and one loop.
enum ClusterSlot {
    static let count = 16384

    /// The slot of `name`.
    static func of(_ name: some Collection<UInt8>) -> Int {
        if let slot = name.withContiguousStorageIfAvailable({ of(UnsafeRawBufferPointer($0)) }) { return slot }
        return Array(name).withUnsafeBytes { of($0) }
    }

    /// The slot of a channel or key argument, read in place.
    static func of(_ argument: RedisArgument) -> Int {
        argument.withBytes { of($0) }
    }

    private static func of(_ bytes: UnsafeRawBufferPointer) -> Int {
        let hashed = hashTag(bytes).map { bytes[$0] } ?? bytes[...]
        return Int(crc16(hashed) & 0x3FFF)
    }

    /// The range of the hash tag in `bytes`, if it has one.
    static func hashTag<Bytes: RandomAccessCollection<UInt8>>(_ bytes: Bytes) -> Range<Bytes.Index>? {
        guard let open = bytes.firstIndex(of: UInt8(ascii: "{")) else { return nil }
        let start = bytes.index(after: open)
        guard let close = bytes[start...].firstIndex(of: UInt8(ascii: "}")), close > start else { return nil }
        return start..<close
    }

    static func crc16(_ bytes: some Sequence<UInt8>) -> UInt16 {
        var crc: UInt16 = 0
        table.withUnsafeBufferPointer { table in
            for byte in bytes {
                crc = (crc << 8) ^ table[Int((crc >> 8) ^ UInt16(byte))]
            }
        }
        return crc
    }

    /// CRC16-CCITT (XMODEM: polynomial 0x1021, initial value 0), one entry per byte value.
    private static let table: [UInt16] = (0..<256).map { value in
        var crc = UInt16(value) << 8
        for _ in 0..<8 {
            crc = crc & 0x8000 != 0 ? (crc << 1) ^ 0x1021 : crc << 1
        }
        return crc
    }
}
