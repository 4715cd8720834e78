#if canImport(Glibc)
import Glibc
#endif
import CMemWallShim
import MemWallCore
import Transport

/// A pool on a device-DAX device (`/dev/daxX.Y`): the form in which CXL memory shared
/// between hosts appears. The segment is the device itself, mapped directly; the pool's
/// name is a small file under ``KVPool/directory`` (a *name file*: magic `MWPLLINK`
/// and the device's path) so that processes still attach by name.
///
/// The device is written only with the user's consent (`--allow-write`: whatever it held
/// is destroyed), is locked like a segment file (exclusive while created and destroyed,
/// shared while attached), and only a `/dev/daxN.M` character device is accepted.
enum PoolDevice {
    /// "MWPLLINK" as a little-endian word.
    static let linkMagic: UInt64 = 0x4B4E_494C_4C50_574D
    static let linkBytes = 4096
    /// Where the device's path starts in a name file (after the magic and a version word).
    static let pathOffset = 32

    // MARK: The name file

    /// The device a name file points to, or nil when the file is a segment itself.
    /// - Throws: `corrupted` for a name file whose device path is not a DAX device path.
    static func linkedDevice(_ fd: Int32, path: String) throws(MemWallError) -> String? {
        var bytes = [UInt8](repeating: 0, count: linkBytes)
        let got = bytes.withUnsafeMutableBytes { b in
            b.baseAddress.map { SyscallFunnel.system.preadFully(fd, $0, b.count, 0) } ?? .success(0)
        }
        let n = min(bytes.count, (try? got.get()) ?? 0)
        guard n >= pathOffset, bytes.withUnsafeBytes({ $0.loadUnaligned(as: UInt64.self) }) == linkMagic else { return nil }
        let field = bytes[pathOffset..<max(pathOffset, n)]
        guard let end = field.firstIndex(of: 0) else {
            throw MemWallError(.corrupted, "'\(path)' names a device, but its path is not terminated; destroy it (memwall pool destroy) and create it again")
        }
        let device = String(decoding: field[pathOffset..<end], as: UTF8.self)
        guard isDAXPath(device) else {
            throw MemWallError(.corrupted, "'\(path)' names '\(device)', which is not a device-DAX path (/dev/daxN.M)")
        }
        return device
    }

    /// `/dev/daxN.M`, nothing else (no links, no other devices, no "..").
    static func isDAXPath(_ p: String) -> Bool {
        guard p.hasPrefix("/dev/dax") else { return false }
        let rest = p.dropFirst("/dev/dax".count).split(separator: ".", omittingEmptySubsequences: false)
        return rest.count == 2 && rest.allSatisfy { !$0.isEmpty && $0.count <= 6 && $0.allSatisfy(\.isNumber) }
    }

    // MARK: The device

    /// Size and mapping alignment of a DAX device, from `/sys/bus/dax/devices/daxN.M`.
    static func geometry(of device: String) throws(MemWallError) -> (bytes: Int, align: Int) {
        let name = String(device.dropFirst("/dev/".count))
        func number(_ file: String) -> Int? {
            let fd = Glibc.open("/sys/bus/dax/devices/\(name)/\(file)", O_RDONLY | O_CLOEXEC)
            guard fd >= 0 else { return nil }
            defer { close(fd) }
            var b = [UInt8](repeating: 0, count: 64)
            let r = b.withUnsafeMutableBytes { p in p.baseAddress.map { SyscallFunnel.system.read(fd, $0, 63) } ?? .success(0) }
            guard case .success(let k) = r, k > 0 else { return nil }
            return Int(String(decoding: b[0..<k], as: UTF8.self).trimmingWhitespace())
        }
        guard let bytes = number("size"), bytes > 0 else {
            throw MemWallError(.notFound, "cannot read the size of \(device) from /sys/bus/dax/devices/\(name)/size (is it a device-DAX device?)")
        }
        let align = number("align") ?? (2 << 20)
        return (bytes, max(4096, align))
    }

    /// Opens a DAX device for reading and writing and locks it (shared, or exclusive).
    static func openDevice(_ device: String, exclusive: Bool) throws(MemWallError) -> Int32 {
        guard isDAXPath(device) else {
            throw .invalid("DAX device", device, expected: "a device-DAX device such as /dev/dax0.0")
        }
        let fd: Int32
        switch SyscallFunnel.system.open(device, O_RDWR | O_CLOEXEC | O_NOFOLLOW) {
        case .success(let f): fd = f
        case .failure(let e):
            if e == .noEntry { throw MemWallError(.notFound, "\(device) does not exist", function: "open", errno: e) }
            throw .system("open", e, "cannot open \(device) for reading and writing")
        }
        var st = stat()
        guard fstat(fd, &st) == 0, (st.st_mode & S_IFMT) == S_IFCHR else {
            close(fd)
            throw .invalid("DAX device", device, expected: "a character device")
        }
        do throws(MemWallError) {
            try BackingFile.lock(fd, exclusive: exclusive, path: device)
        } catch {
            close(fd)
            throw error
        }
        return fd
    }

    /// Creates a pool on `device` (its contents are destroyed: the caller has the user's
    /// consent) using at most `bytes` of it, and its name file at `path`.
    static func create(path: String, device: String, bytes: Int?, blockBytes: Int, processSlots: Int) throws(MemWallError) -> PoolSegment {
        guard isDAXPath(device) else {
            throw .invalid("DAX device", device, expected: "a device-DAX device such as /dev/dax0.0")
        }
        let (size, align) = try geometry(of: device)
        let want = min(size, bytes ?? size)
        let layout = try PoolLayout.plan(segmentBytes: want, blockBytes: blockBytes, processSlots: processSlots)
        let mapped = min(size, (layout.usedBytes + align - 1) / align * align)
        let fd = try openDevice(device, exclusive: true)
        var link: BackingFile.Opened?
        do throws(MemWallError) {
            // The name first (O_EXCL): an existing pool of that name is never overwritten, nor its device.
            link = try BackingFile.open(path, create: true, existing: .refuse, waitForLock: false, funnel: .system)
            let region = try PoolSegment.map(fd, bytes: mapped, path: device,
                                             placement: MemoryPlacement(node: nil, label: "KV pool on \(device) (device-DAX)"))
            PoolSegment.initialize(region, layout: layout, segmentBytes: layout.usedBytes, node: nil, emulated: false, device: device)
            var record = [UInt8](repeating: 0, count: linkBytes)
            record.withUnsafeMutableBytes { r in
                r.storeBytes(of: linkMagic, toByteOffset: 0, as: UInt64.self)
                r.storeBytes(of: UInt32(1), toByteOffset: 8, as: UInt32.self)
                for (i, b) in device.utf8.enumerated() where pathOffset + i < linkBytes - 1 { r[pathOffset + i] = b }
            }
            if let l = link {
                let wrote = record.withUnsafeBytes { pwrite(l.fd, $0.baseAddress, $0.count, 0) }
                guard wrote == linkBytes else { throw .system("pwrite", .current, "cannot write the name file '\(path)'") }
            }
            if var l = link {
                BackingFile.keep(&l)
                close(l.fd)
            }
            try BackingFile.lock(fd, exclusive: false, path: device)
            return PoolSegment(path: path, region: region, layout: layout, node: nil, emulated: false, device: device, fd: fd)
        } catch {
            if let link { BackingFile.release(link) }
            close(fd)
            throw error
        }
    }

    /// Attaches to the pool on `device` that the name file `path` points to.
    static func open(device: String, path: String, name: String) throws(MemWallError) -> PoolSegment {
        let (size, align) = try geometry(of: device)
        let fd = try openDevice(device, exclusive: false)
        do throws(MemWallError) {
            // The header says how much of the device the pool uses: map one page first to read it.
            let first = try PoolSegment.map(fd, bytes: min(size, align), path: device, placement: .anyNode)
            let claimed = Int(min(UInt64(size), first.baseAddress.assumingMemoryBound(to: memwall_pool_header.self).pointee.segment_bytes))
            let mapped = min(size, max(align, (claimed + align - 1) / align * align))
            let region = try PoolSegment.map(fd, bytes: mapped, path: device, placement: .anyNode)
            return try PoolSegment.checked(region, bytes: mapped, fd: fd, path: path, name: name, device: device)
        } catch {
            close(fd)
            throw error
        }
    }

    /// Destroys the pool on `device`: its header is marked destroyed, its name file removed.
    static func destroy(device: String, path: String, name: String, force: Bool) throws(MemWallError) {
        let fd: Int32
        do throws(MemWallError) {
            fd = try openDevice(device, exclusive: true)
        } catch where error.code == .busy && force {
            fd = try openDevice(device, exclusive: false)
        } catch where error.code == .busy {
            throw MemWallError(.busy, "KV pool '\(name)' on \(device) is attached: \(error.message); detach them first, or pass --force")
        } catch where error.code == .notFound {
            // The device is gone (reconfigured): the name is all that is left.
            try CCall.minusOne(unlink(path), "unlink", "cannot remove '\(path)'")
            return
        }
        defer { close(fd) }
        // A DAX device has no read(2)/write(2): its header is reached through a mapping.
        if let (size, align) = try? geometry(of: device),
           let head = try? PoolSegment.map(fd, bytes: min(size, align), path: device, placement: .anyNode) {
            let h = head.baseAddress.assumingMemoryBound(to: memwall_pool_header.self)
            if h.pointee.magic == MEMWALL_POOL_MAGIC {
                // Anyone who opened the device before the name went and locks it after us sees this and refuses.
                memwall_shared_store(memwall_pool_header_state(h), MEMWALL_POOL_DESTROYED)
            }
        }
        try CCall.minusOne(unlink(path), "unlink", "cannot remove '\(path)'")
    }
}
