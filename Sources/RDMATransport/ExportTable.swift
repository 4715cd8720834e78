import MemWallCore
import Synchronization
import Transport

/// One name this side exported: which bytes, what peers may do, and the key
/// peers must present.
struct LocalExport: Sendable {
    let name: String
    let region: MemoryRegion
    let offset: Int
    let length: Int
    let access: RemoteAccess
    /// rkey (RDMA; shared by every export of one registration) or a per-export key (emulation).
    let key: UInt32
    /// What peers put in their descriptors for byte 0 of the export.
    let address: UInt64
    /// Keeps the registration that `key` belongs to alive while the name is exported.
    let registration: (any AnyObject & Sendable)?

    /// The key-independent part of the check every emulated descriptor passes
    /// before a byte moves: access, then bounds, without overflow for any
    /// `offset` a peer sends. Returns the export only when the access may go ahead.
    func admits(offset: UInt64, length: Int, need: RemoteAccess) -> (FrameHeader.Status, LocalExport?) {
        guard access.contains(need) else { return (.notPermitted, nil) }
        guard length > 0, offset <= UInt64(self.length), UInt64(length) <= UInt64(self.length) - offset else {
            return (.outOfBounds, nil)
        }
        return (.ok, self)
    }

    var info: ExportedRegionInfo {
        ExportedRegionInfo(name: name, byteCount: length, access: access, address: address, key: key)
    }
}

/// The names a transport exported, in export order.
final class ExportTable: Sendable {
    private let entries = Mutex<[LocalExport]>([])

    /// Checks a requested export before any resource is spent on it.
    static func validate(_ region: MemoryRegion, offset: Int, length: Int, name: String, access: RemoteAccess) throws(MemWallError) {
        guard !name.isEmpty, name.utf8.count <= 255 else {
            throw .invalid("export name", name, expected: "1 to 255 bytes of UTF-8")
        }
        guard !access.isEmpty else {
            throw .invalid("access for export '\(name)'", "none", expected: "read, write, or both")
        }
        guard length > 0 else {
            throw .invalid("length of export '\(name)'", length, expected: "a positive number of bytes")
        }
        try region.checkBounds(offset: offset, length: length)
    }

    /// Adds an export.
    /// - Throws: `alreadyExists` when the name is taken; `invalidArgument` when
    ///   ``ExportTableCodec/maximumEntries`` names are already exported (a peer
    ///   would otherwise be sent a table it must refuse).
    func add(_ export: LocalExport) throws(MemWallError) {
        enum Outcome { case added, taken, full }
        let outcome = entries.withLock { e -> Outcome in
            if e.contains(where: { $0.name == export.name }) { return .taken }
            if e.count >= ExportTableCodec.maximumEntries { return .full }
            e.append(export)
            return .added
        }
        switch outcome {
        case .added: return
        case .taken:
            throw MemWallError(.alreadyExists, "a region is already exported as '\(export.name)'; unexport it first or pick another name")
        case .full:
            throw MemWallError(.invalidArgument,
                "cannot export '\(export.name)': \(ExportTableCodec.maximumEntries) names are exported already, the most one export table carries; unexport one first")
        }
    }

    /// Removes an export.
    /// - Throws: `notFound` naming the exported names.
    @discardableResult
    func remove(_ name: String) throws(MemWallError) -> LocalExport {
        let (found, names) = entries.withLock { e -> (LocalExport?, [String]) in
            guard let i = e.firstIndex(where: { $0.name == name }) else { return (nil, e.map(\.name)) }
            return (e.remove(at: i), [])
        }
        guard let found else {
            throw MemWallError(.notFound,
                "no region is exported as '\(name)'; exported names: " + (names.isEmpty ? "none" : names.joined(separator: ", ")))
        }
        return found
    }

    /// The export holding `key`, if any (keys are unique in the emulation).
    func lookup(key: UInt32) -> LocalExport? {
        entries.withLock { $0.first { $0.key == key } }
    }

    /// True while some export uses `region`.
    func uses(_ region: MemoryRegion) -> Bool {
        entries.withLock { $0.contains { $0.region === region } }
    }

    /// What peers are told.
    var snapshot: [ExportedRegionInfo] { entries.withLock { $0.map(\.info) } }

    /// Every export, with the region it holds.
    var all: [LocalExport] { entries.withLock { $0 } }
}

/// Binary form of an export table, sent by the listening side as the first
/// message of every connection. Little-endian:
/// `count:u32 { nameLength:u16 name address:u64 length:u64 key:u32 access:u8 }*`.
enum ExportTableCodec {
    /// Largest table accepted (and the RDMA receive buffer for it).
    static let maximumBytes = 256 * 1024

    static func encode(_ infos: [ExportedRegionInfo]) -> [UInt8] {
        var out: [UInt8] = []
        func put<T: FixedWidthInteger>(_ v: T) { withUnsafeBytes(of: v.littleEndian) { out.append(contentsOf: $0) } }
        put(UInt32(infos.count))
        for i in infos {
            let name = Array(i.name.utf8)
            put(UInt16(name.count))
            out.append(contentsOf: name)
            put(i.address)
            put(UInt64(i.byteCount))
            put(i.key)
            put(i.access.rawValue)
        }
        return out
    }

    /// Fixed bytes of one entry besides its name.
    static let entryOverhead = 2 + 8 + 8 + 4 + 1

    /// Most exports one side may have: an encoded table of that many entries with
    /// 255-byte names still fits ``maximumBytes``, so every table a peer is sent
    /// is whole.
    static let maximumEntries = (maximumBytes - 4) / (entryOverhead + 255)

    /// Decodes a peer's table. Total: any bytes give a table or an error, never a
    /// trap; the work is linear in `bytes.count`.
    /// - Throws: `malformedInput` naming the byte offset, the bad value and what is
    ///   valid: a truncated entry, an empty or non-UTF-8 or repeated name, a length
    ///   of 0 or one that wraps the address space, access bits other than read/write,
    ///   more entries than ``maximumEntries``, or bytes after the last entry.
    static func decode(_ bytes: UnsafeRawBufferPointer, peer: String) throws(MemWallError) -> [ExportedRegionInfo] {
        var at = 0
        func bad(_ what: String) -> MemWallError {
            MemWallError(.malformedInput,
                "the export table from \(peer) is malformed at byte \(at) of \(bytes.count): \(what); is it a MemWall peer of the same version?")
        }
        func get<T: FixedWidthInteger>(_: T.Type, _ field: String) throws(MemWallError) -> T {
            guard bytes.count - at >= MemoryLayout<T>.size else {
                throw bad("the table ends inside \(field) (\(MemoryLayout<T>.size) bytes)")
            }
            var v: T = 0
            withUnsafeMutableBytes(of: &v) { $0.copyMemory(from: UnsafeRawBufferPointer(rebasing: bytes[at ..< at + MemoryLayout<T>.size])) }
            at += MemoryLayout<T>.size
            return T(littleEndian: v)
        }
        let count = try get(UInt32.self, "the entry count")
        // Each entry takes at least `entryOverhead + 1` bytes: a count the bytes cannot hold is a lie.
        guard count <= UInt32(maximumEntries), Int(count) <= (bytes.count - at) / (entryOverhead + 1) else {
            throw bad("\(count) entries announced; at most \(min(maximumEntries, (bytes.count - at) / (entryOverhead + 1))) fit")
        }
        var out: [ExportedRegionInfo] = []
        out.reserveCapacity(Int(count))
        var names = Set<String>()
        for _ in 0 ..< count {
            let n = Int(try get(UInt16.self, "a name length"))
            guard n >= 1, n <= 255 else { throw bad("a name of \(n) bytes; valid are 1 to 255") }
            guard bytes.count - at >= n else { throw bad("the table ends inside a name of \(n) bytes") }
            guard let name = String(validating: UnsafeRawBufferPointer(rebasing: bytes[at ..< at + n]), as: UTF8.self) else {
                throw bad("a name that is not UTF-8")
            }
            guard names.insert(name).inserted else { throw bad("the name '\(name)' appears twice") }
            at += n
            let address = try get(UInt64.self, "an address")
            let length = try get(UInt64.self, "a length")
            let key = try get(UInt32.self, "a key")
            let access = try get(UInt8.self, "access bits")
            guard length > 0, length <= UInt64(Int.max), address <= UInt64.max - length else {
                throw bad("export '\(name)' has length \(length) at address \(address); valid are 1 to \(Int.max) bytes not wrapping 2^64")
            }
            guard access >= 1, access <= 3 else {
                throw bad("export '\(name)' has access bits \(access); valid are 1 (read), 2 (write), 3 (both)")
            }
            out.append(ExportedRegionInfo(name: name, byteCount: Int(length), access: RemoteAccess(rawValue: access),
                                          address: address, key: key))
        }
        guard at == bytes.count else { throw bad("\(bytes.count - at) bytes follow the last entry") }
        return out
    }
}
