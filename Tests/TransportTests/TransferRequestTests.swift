#if canImport(Glibc)
import Glibc
#endif
import MemWallCore
import Testing
@testable import Transport

/// The request's own bookkeeping, driven directly (as a transport drives it).
struct TransferRequestTests {
    static func request(descriptors n: Int, estimator: PathCostEstimator? = nil) throws -> TransferRequest {
        let local = try MemoryRegion.allocate(byteCount: 4096)
        let far = try MemoryRegion.allocate(byteCount: 4096)
        let ds = (0 ..< n).map { _ in TransferDescriptor(local: local, target: .memory(far), length: 16) }
        return TransferRequest(prepared: PreparedTransfer(operation: .write, descriptors: ds, transportName: "test"), estimator: estimator)
    }

    @Test("a thread blocked in waitBlocking parks and is woken by the last completion from another thread")
    func waitBlockingParksAndWakes() throws {
        let r = try Self.request(descriptors: 3)
        let finisher = Thread {
            // Long enough that the waiter has stopped spinning and parked.
            usleep(200_000)
            r.complete(descriptor: 0, .success(16))
            r.complete(descriptor: 2, .success(16))
            usleep(50_000)
            r.complete(descriptor: 1, .success(16))
        }
        finisher.start()
        let report = try r.waitBlocking()
        #expect(report.bytes == 48)
        #expect(report.descriptorCount == 3)
        #expect(r.poll() == .completed)
        finisher.join()
    }

    @Test("per-descriptor status past the 64 inline bits, failures and cancellations, and the estimator only for clean requests")
    func statusesAndReports() throws {
        let estimator = PathCostEstimator()
        let r = try Self.request(descriptors: 130, estimator: estimator)
        for i in 0 ..< 130 where i != 100 && i != 129 { r.complete(descriptor: i, .success(16)) }
        #expect(r.status(ofDescriptor: 64) == .completed)
        #expect(r.status(ofDescriptor: 100) == .pending)
        r.complete(descriptor: 100, .failure(MemWallError(.cancelled, "test")))
        r.complete(descriptor: 100, .success(16))  // a second report of the same descriptor is ignored
        #expect(r.status(ofDescriptor: 100) == .cancelled)
        #expect(r.poll() == .pending)
        r.complete(descriptor: 129, .failure(MemWallError(.systemCall, "boom")))
        #expect(r.status(ofDescriptor: 129) == .failed(MemWallError(.systemCall, "boom")))
        if case .failed = r.poll() {} else { Issue.record("expected failed, got \(r.poll())") }
        #expect(r.descriptorStatuses.filter { $0 == .completed }.count == 128)
        #expect(estimator.estimate(target: .memory, operation: .write) == nil)

        let clean = try Self.request(descriptors: 2, estimator: estimator)
        clean.complete(descriptor: 1, .success(16))
        clean.complete(descriptor: 0, .success(16))
        #expect(try clean.waitBlocking().bytes == 32)
        #expect(estimator.estimate(target: .memory, operation: .write)?.samples == 1)
    }
}

/// A plain joinable thread for the test (Foundation's Thread is not linked here).
private final class Thread: @unchecked Sendable {
    private let body: () -> Void
    private var handle = pthread_t()

    init(_ body: @escaping () -> Void) { self.body = body }

    func start() {
        let box = Unmanaged.passRetained(self)
        pthread_create(&handle, nil, { raw in
            guard let raw else { return nil }
            let me = Unmanaged<Thread>.fromOpaque(raw).takeRetainedValue()
            me.body()
            return nil
        }, box.toOpaque())
    }

    func join() { pthread_join(handle, nil) }
}
