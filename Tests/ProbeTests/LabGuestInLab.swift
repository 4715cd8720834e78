#if canImport(Glibc)
import Glibc
#endif
import CURing
import MemWallCore
import NUMATransport
import RDMATransport
import Testing
import Transport

/// Proves, through MemWall's own probes, that the lab guest is the CXL + NVMe +
/// RDMA host it claims to be; every other lab test relies on this.
@Suite("Lab guest identity", .enabled(if: insideLab, "runs in the lab guest (make lab)"))
struct LabGuestInLab {
    @Test func twoNodesAndNodeOneIsCPUlessFarMemoryWithHMAT() throws {
        let p = NUMAProbe.probe()
        #expect(p.available)
        #expect(p.nodes.map(\.id) == [0, 1])
        #expect(p.cpulessNodes == [1])
        let far = try #require(p.nodes.first { $0.id == 1 }?.firmwareFigures, "node 1 has no HMAT figures")
        #expect(far.readLatencyNanoseconds == 250)
        #expect(far.readBandwidthMiBps == 64 * 1024)
        let near = try #require(p.nodes.first { $0.id == 0 }?.firmwareFigures)
        #expect(near.readLatencyNanoseconds == 90)
        #expect(p.pageMigrationUsable)
    }

    @Test func nvmeRoundTripsAPatternThroughIOURingWithODirect() throws {
        let disk = try StorageTarget(path: "/dev/nvme0n1", existing: .write, requireDirect: true, waitForLock: true)
        #expect(disk.isBlockDevice && disk.accessMode == .direct)
        let length = 1 << 20
        let offset = disk.byteCount - Int64(length) * 3
        let out = try MemoryRegion.allocate(byteCount: length)
        let back = try MemoryRegion.allocate(byteCount: length)
        out.withUnsafeMutableBytes { b in for i in 0..<b.count { b[i] = UInt8(truncatingIfNeeded: i &* 131 &+ 17) } }
        var ring = io_uring()
        try CCall.negativeErrno(io_uring_queue_init(4, &ring, 0), "io_uring_queue_init", "ring setup")
        defer { io_uring_queue_exit(&ring) }
        func roundTrip(_ write: Bool, _ region: MemoryRegion) throws {
            let sqe = try #require(io_uring_get_sqe(&ring))
            if write {
                io_uring_prep_write(sqe, disk.fileDescriptor, region.baseAddress, UInt32(length), UInt64(offset))
            } else {
                io_uring_prep_read(sqe, disk.fileDescriptor, region.baseAddress, UInt32(length), UInt64(offset))
            }
            try CCall.negativeErrno(io_uring_submit(&ring), "io_uring_submit", "submit")
            var cqe: UnsafeMutablePointer<io_uring_cqe>?
            try CCall.negativeErrno(io_uring_wait_cqe(&ring, &cqe), "io_uring_wait_cqe", "wait")
            let res = try #require(cqe).pointee.res
            io_uring_cqe_seen(&ring, cqe)
            #expect(res == Int32(length), "\(write ? "write" : "read") returned \(res)")
        }
        try roundTrip(true, out)
        try roundTrip(false, back)
        let same = memcmp(out.baseAddress, back.baseAddress, length) == 0
        #expect(same, "data read back from /dev/nvme0n1 differs from what was written")
    }

    @Test func rxe0IsPresentWithAnActivePort() {
        let p = RDMAProbe.probe()
        let rxe = p.devices.first { $0.name == "rxe0" }
        #expect(rxe != nil, "devices: \(p.devices.map(\.name))")
        #expect(rxe?.ports.contains { $0.isActive && $0.linkLayer == "Ethernet" } == true)
        #expect(p.connectionManagerWorks, "\(p.connectionManagerError ?? "")")
    }
}
