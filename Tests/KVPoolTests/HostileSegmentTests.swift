#if canImport(Glibc)
import Glibc
#endif
import CMemWallShim
import KVPlacement
@testable import KVPool
import MemWallCore
import Testing
import Transport

/// A segment is input from a peer: whatever its bytes, attaching refuses it
/// with an error naming the problem, or works on it without crashing or
/// looping, and never hands out bytes that fail their checksum.
@Suite("KVPool: hostile segments")
struct HostileSegmentTests {
    /// Writes `bytes` as the segment of pool `name` (mode 0600, ours), as a peer could.
    private func plant(_ name: String, _ bytes: [UInt8]) throws {
        let path = try KVPool.path(ofPool: name)
        let fd = open(path, O_RDWR | O_CREAT | O_EXCL | O_CLOEXEC, 0o600)
        #expect(fd >= 0)
        defer { close(fd) }
        let n = bytes.withUnsafeBytes { write(fd, $0.baseAddress, $0.count) }
        #expect(n == bytes.count)
    }

    private func refused(_ name: String, _ code: MemWallError.Code, mentioning: String? = nil) {
        #expect {
            _ = try KVPool.attach(name: name)
        } throws: { e in
            guard let e = e as? MemWallError, e.code == code else { return false }
            return mentioning.map { e.message.contains($0) } ?? true
        }
    }

    @Test func garbageIsRefusedAndNotDestroyed() throws {
        var rng = SplitMix64(seed: 14)
        // (An empty file is what a creator killed between creating and sizing it leaves: destroy removes that one.)
        for size in [100, 4096, 1 << 20] {
            let name = PoolNames.fresh("garbage")
            try plant(name, (0..<size).map { _ in UInt8(truncatingIfNeeded: rng.next()) })
            refused(name, .corrupted)
            #expect(throws: MemWallError.self) { _ = try KVPool.status(name: name) }
            #expect { try KVPool.destroy(name: name) } throws: { ($0 as? MemWallError)?.code == .invalidArgument }
            #expect(access(try KVPool.path(ofPool: name), F_OK) == 0, "a file that is not a pool is left alone")
            unlink(try KVPool.path(ofPool: name))
        }
    }

    @Test func anUnfinishedCreationIsRefusedAndCanBeDestroyed() throws {
        let name = PoolNames.fresh("unfinished")
        try plant(name, [UInt8](repeating: 0, count: 8192))
        refused(name, .corrupted, mentioning: "never finished")
        try KVPool.destroy(name: name)
    }

    @Test func aLinkIsNotFollowed() throws {
        let name = PoolNames.fresh("link")
        let target = PoolNames.fresh("target")
        let real = try KVPool.create(name: target, bytes: 1 << 20, blockBytes: 4096)
        defer { real.close(); try? KVPool.destroy(name: target, force: true) }
        #expect(symlink(real.path, try KVPool.path(ofPool: name)) == 0)
        defer { unlink((try? KVPool.path(ofPool: name)) ?? "") }
        refused(name, .invalidArgument, mentioning: "symbolic link")
    }

    /// Every field of a real header, changed one at a time (with the layout
    /// checksum recomputed, so the checks behind it are reached too).
    @Test func everyHeaderFieldIsChecked() throws {
        let name = PoolNames.fresh("fields")
        let pool = try KVPool.create(name: name, bytes: 1 << 20, blockBytes: 4096, processes: 4)
        let path = pool.path
        pool.close()
        defer { try? KVPool.destroy(name: name, force: true) }
        let fd = open(path, O_RDWR | O_CLOEXEC)
        #expect(fd >= 0)
        defer { close(fd) }
        var original = memwall_pool_header()
        #expect(withUnsafeMutableBytes(of: &original) { pread(fd, $0.baseAddress, $0.count, 0) } == MemoryLayout<memwall_pool_header>.size)
        let cases: [(String, (inout memwall_pool_header) -> Void, Bool)] = [
            ("magic", { $0.magic ^= 1 }, true),
            ("version", { $0.version = 99 }, true),
            ("header size", { $0.header_bytes = 4096 }, true),
            ("checksum", { $0.layout_checksum ^= 1 }, false),
            ("block size", { $0.block_bytes = 1000 }, true),
            ("block size", { $0.block_bytes = UInt64.max }, true),
            ("slot count", { $0.slot_count = 0 }, true),
            ("slot count", { $0.slot_count = UInt32.max }, true),
            ("process slot count", { $0.process_slots = 255 }, true),
            ("bucket count", { $0.bucket_count = 1000 }, true),
            ("offsets", { $0.holds_offset &+= 64 }, true),
            ("offsets", { $0.data_offset = UInt64.max }, true),
            ("claims", { $0.segment_bytes = 1 << 40 }, true),
            ("claims", { $0.slot_count &+= 1; $0.bucket_count = UInt32(PoolLayout.buckets(for: Int($0.slot_count)));
                         let l = PoolLayout(blockBytes: Int($0.block_bytes), slotCount: Int($0.slot_count), processSlots: Int($0.process_slots))
                         $0.holds_offset = UInt64(l.holdsOffset); $0.slot_table_offset = UInt64(l.slotTableOffset)
                         $0.bucket_offset = UInt64(l.bucketOffset); $0.data_offset = UInt64(l.dataOffset) }, true),
        ]
        for (what, change, resum) in cases {
            var h = original
            change(&h)
            if resum { h.layout_checksum = withUnsafeBytes(of: &h) { memwall_checksum($0.baseAddress, PoolLayout.offsetOfLayoutChecksum) } }
            #expect(withUnsafeBytes(of: &h) { pwrite(fd, $0.baseAddress, $0.count, 0) } == MemoryLayout<memwall_pool_header>.size)
            #expect {
                _ = try KVPool.attach(name: name)
            } throws: { e in
                guard let e = e as? MemWallError, e.code == .corrupted else { return false }
                return e.message.contains(what)
            }
        }
        #expect(withUnsafeMutableBytes(of: &original) { pwrite(fd, $0.baseAddress, $0.count, 0) } == MemoryLayout<memwall_pool_header>.size)
        let back = try KVPool.attach(name: name)
        #expect(try back.status().problems.isEmpty, "the untouched header attaches again")
        back.close()
    }

    /// A valid header over tables full of garbage: every call returns — a miss,
    /// a per-block error, or bytes that match their checksum — and stat lists
    /// what is wrong.
    @Test(arguments: [UInt64(1), 2, 3])
    func garbageTablesAreSurvived(seed: UInt64) throws {
        let name = PoolNames.fresh("tables")
        let blockBytes = 4096
        let creator = try KVPool.create(name: name, bytes: PoolLayout(blockBytes: blockBytes, slotCount: 64, processSlots: 4).usedBytes,
                                        blockBytes: blockBytes, processes: 4)
        defer { try? KVPool.destroy(name: name, force: true) }
        let keys = chain(40 + seed, 32)
        let b = try Blocks(count: 32, blockBytes: blockBytes)
        b.fill(keys)
        #expect(try creator.store(keys, from: b.buffers(32)).succeeded)
        let layout = creator.tables.layout
        creator.close()
        // Scribble over the process table, the references, the slots and the buckets (not the lock).
        let fd = open(try KVPool.path(ofPool: name), O_RDWR | O_CLOEXEC)
        defer { close(fd) }
        var rng = SplitMix64(seed: seed)
        var garbage = (0..<(layout.dataOffset - layout.processTableOffset)).map { _ in UInt8(truncatingIfNeeded: rng.next()) }
        if seed == 2 {
            // Plausible garbage: small numbers, so slot indexes and states are in range more often.
            garbage = garbage.map { $0 & 0x07 }
        }
        #expect(garbage.withUnsafeBytes { pwrite(fd, $0.baseAddress, $0.count, off_t(layout.processTableOffset)) } == garbage.count)

        let pool = try KVPool.attach(name: name)
        defer { pool.close() }
        _ = try pool.lookup(keys)
        b.clear()
        let loaded = try pool.load(keys, into: b.buffers(32))
        for i in 0..<32 where !loaded.failed.contains(where: { $0.index == i }) {
            #expect(b.holds(keys[i], at: i), "a block served from a damaged pool still has its own bytes")
        }
        if let v = try? pool.view(keys[0]) {
            _ = v.verify()   // a view is checked only when asked; reading it must not crash
            v.close()
        }
        let fresh = chain(50 + seed, 16)
        b.fill(fresh)
        _ = try pool.store(fresh, from: b.buffers(16))
        b.clear()
        let again = try pool.load(fresh, into: b.buffers(16))
        for i in 0..<16 where !again.failed.contains(where: { $0.index == i }) {
            #expect(b.holds(fresh[i], at: i))
        }
        _ = try pool.reclaimDeadProcesses()
        _ = try pool.status()
    }
}

/// A pool on a device-DAX device is reached through a name file; both are checked.
@Suite("KVPool: device-DAX name files")
struct DeviceNameFileTests {
    private func nameFile(_ name: String, device: String) throws {
        var record = [UInt8](repeating: 0, count: 4096)
        record.withUnsafeMutableBytes { r in
            r.storeBytes(of: PoolDevice.linkMagic, toByteOffset: 0, as: UInt64.self)
            for (i, b) in device.utf8.enumerated() { r[PoolDevice.pathOffset + i] = b }
        }
        let fd = open(try KVPool.path(ofPool: name), O_RDWR | O_CREAT | O_EXCL | O_CLOEXEC, 0o600)
        #expect(fd >= 0)
        defer { close(fd) }
        #expect(record.withUnsafeBytes { write(fd, $0.baseAddress, $0.count) } == 4096)
    }

    @Test func aNameFileMustNameADAXDevice() throws {
        for target in ["/etc/passwd", "/dev/dax0.0/../../etc/passwd", "/dev/sda", "/dev/dax", "/dev/dax1.x"] {
            let name = PoolNames.fresh("link")
            try nameFile(name, device: target)
            #expect {
                _ = try KVPool.attach(name: name)
            } throws: { ($0 as? MemWallError)?.code == .corrupted && "\($0)".contains("not a device-DAX path") }
            try KVPool.destroy(name: name)
        }
        let gone = PoolNames.fresh("gone")
        try nameFile(gone, device: "/dev/dax97.3")
        #expect { _ = try KVPool.attach(name: gone) } throws: { ($0 as? MemWallError)?.code == .notFound }
        try KVPool.destroy(name: gone)   // the device is gone: the name is all that is left
        #expect(access(try KVPool.path(ofPool: gone), F_OK) != 0)
    }

    @Test func aDeviceIsWrittenOnlyWithConsent() throws {
        let name = PoolNames.fresh("dax")
        #expect {
            _ = try KVPool.create(name: name, device: "/dev/dax0.0", blockBytes: 4096, allowWrite: false)
        } throws: { ($0 as? MemWallError)?.code == .alreadyExists && "\($0)".contains("--allow-write") }
        #expect {
            _ = try KVPool.create(name: name, device: "/dev/null", blockBytes: 4096, allowWrite: true)
        } throws: { ($0 as? MemWallError)?.code == .invalidArgument }
        #expect(access(try KVPool.path(ofPool: name), F_OK) != 0, "nothing was created")
    }
}
