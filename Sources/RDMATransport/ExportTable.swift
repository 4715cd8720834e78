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
    /// - Throws: `alreadyExists` when the name is taken.
    func add(_ export: LocalExport) throws(MemWallError) {
        let taken = entries.withLock { e -> Bool in
            if e.contains(where: { $0.name == export.name }) { return true }
            e.append(export)
            return false
        }
        if taken {
            throw MemWallError(.alreadyExists, "a region is already exported as '\(export.name)'; unexport it first or pick another name")
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

    static func decode(_ bytes: UnsafeRawBufferPointer, peer: String) throws(MemWallError) -> [ExportedRegionInfo] {
        var at = 0
        func bad() -> MemWallError {
            MemWallError(.malformedInput, "the export table from \(peer) is malformed at byte \(at) of \(bytes.count); is it a MemWall peer of the same version?")
        }
        func get<T: FixedWidthInteger>(_: T.Type) throws(MemWallError) -> T {
            guard at + MemoryLayout<T>.size <= bytes.count else { throw bad() }
            var v: T = 0
            withUnsafeMutableBytes(of: &v) { $0.copyMemory(from: UnsafeRawBufferPointer(rebasing: bytes[at ..< at + MemoryLayout<T>.size])) }
            at += MemoryLayout<T>.size
            return T(littleEndian: v)
        }
        let count = try get(UInt32.self)
        guard count <= 1 << 20 else { throw bad() }
        var out: [ExportedRegionInfo] = []
        for _ in 0 ..< count {
            let n = Int(try get(UInt16.self))
            guard at + n <= bytes.count else { throw bad() }
            let name = String(decoding: UnsafeRawBufferPointer(rebasing: bytes[at ..< at + n]), as: UTF8.self)
            at += n
            let address = try get(UInt64.self)
            let length = try get(UInt64.self)
            let key = try get(UInt32.self)
            let access = try get(UInt8.self)
            guard length > 0, length <= UInt64(Int.max) else { throw bad() }
            out.append(ExportedRegionInfo(name: name, byteCount: Int(length), access: RemoteAccess(rawValue: access & 3),
                                          address: address, key: key))
        }
        return out
    }
}
