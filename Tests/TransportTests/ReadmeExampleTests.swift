#if canImport(Glibc)
import Glibc
#endif
import MemWallCore
import NUMATransport
import Testing
import Transport
import URingTransport

/// The README's Transport example, compiled and run, so the front page cannot drift
/// from the API. Keep the two in step.
@Suite("README example")
struct ReadmeExampleTests {
    @Test func moveToFarMemoryAndToStorageAndBack() async throws {
        // --- README: Transport example (begin) ---
        let numa = NUMATransport()                       // CXL = CPU-less node; emulated on one-node hosts
        let farNode = numa.allocator.emulatedNode ?? 1
        let dram = try numa.allocator.allocate(byteCount: 8 << 20, on: 0)
        let far = try numa.allocator.allocate(byteCount: 8 << 20, on: farNode)
        try numa.register(dram)
        let demote = try numa.prepare(.write, [TransferDescriptor(local: dram, target: .memory(far), length: 8 << 20)])
        let report = try await numa.post(demote).wait()  // prepare once, post as often as needed

        let path = "/var/tmp/memwall-readme-\(getpid()).bin"
        let disk = try StorageTarget(path: path, createWithSize: 8 << 20)  // O_DIRECT, or labelled buffered
        let storage = try URingTransport.makeWithFallback()              // io_uring, or labelled pread pool
        try storage.register(dram)
        try await storage.transfer(.write, [TransferDescriptor(local: dram, target: .storage(disk), length: 8 << 20)])
        try await storage.transfer(.read, [TransferDescriptor(local: dram, target: .storage(disk), length: 8 << 20)])
        // --- README: Transport example (end) ---
        defer { unlink(path) }
        #expect(report.bytes == 8 << 20)
        #expect(numa.costEstimator.estimate(target: .memory, operation: .write) != nil, "a finished request feeds the cost estimate")
        #expect(storage.costEstimator.estimate(target: .storage, operation: .read) != nil)
        try storage.deregister(dram)
        try numa.deregister(dram)
    }
}
