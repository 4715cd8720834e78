#if canImport(Glibc)
import Glibc
#endif
import MemWallCore
import Synchronization
import Testing
@testable import Transport

/// The request's own bookkeeping, driven directly (as a transport drives it).
struct TransferRequestTests {
    static func request(descriptors n: Int, estimator: PathCostEstimator? = nil) throws -> TransferRequest {
        let local = try MemoryRegion.allocate(byteCount: 4096)
        let far = try MemoryRegion.allocate(byteCount: 4096)
        let ds = (0 ..< n).map { _ in TransferDescriptor(local: local, target: .memory(far), length: 16) }
        return TransferRequest(prepared: PreparedTransfer(operation: .write, descriptors: ds, preparedBy: MemoryCopyTransport()), estimator: estimator)
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
        // A second report of the same descriptor is refused and changes nothing.
        #expect(throws: MemWallError.self) { try r.record(descriptor: 100, .success(16)) }
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

    @Test("completers, a canceller, spinning and parked waiters, an async waiter and a poller race on one request, many times")
    func racingCompletionsWaitersAndCancel() async throws {
        let n = 70   // past the 64 inline bits
        for round in 0 ..< 300 {
            let r = try Self.request(descriptors: n)
            // Odd rounds: completers yield after every descriptor, so waiters stop
            // spinning and park. Rounds divisible by 3 also cancel midway.
            let slow = round & 1 == 1
            let cancels = round % 3 == 0
            let completers = (0 ..< 3).map { k in
                Thread {
                    for i in stride(from: k, to: n, by: 3) {
                        if r.isCancellationRequested {
                            r.complete(descriptor: i, .failure(MemWallError(.cancelled, "cancelled before it was issued")))
                        } else {
                            r.complete(descriptor: i, .success(16))
                        }
                        if slow { sched_yield() }
                    }
                }
            }
            let canceller = Thread { if cancels { for _ in 0 ..< round % 40 { sched_yield() }; r.cancel() } }
            let outcomes = Mutex<[Outcome]>([])
            let waiters = (0 ..< 2).map { _ in
                Thread {
                    let o = Outcome(Result { () throws(MemWallError) in try r.waitBlocking() })
                    outcomes.withLock { $0.append(o) }
                }
            }
            let poller = Thread { while !r.poll().isFinal { _ = r.descriptorStatuses } }
            for t in waiters + [poller, canceller] + completers { t.start() }
            let asyncOutcome: Outcome
            do { asyncOutcome = .bytes(try await r.wait().bytes) } catch { asyncOutcome = .error(error.code) }
            for t in waiters + [poller, canceller] + completers { t.join() }

            let statuses = r.descriptorStatuses
            let completed = statuses.filter { $0 == .completed }.count
            #expect(completed + statuses.filter { $0 == .cancelled }.count == n, "round \(round): \(statuses)")
            let expected: Outcome = completed == n ? .bytes(16 * n) : .error(.cancelled)
            #expect(asyncOutcome == expected, "round \(round)")
            #expect(outcomes.withLock { $0 } == [expected, expected], "round \(round)")
            if !cancels { #expect(completed == n, "round \(round)") }
        }
    }
}

/// What a wait returned, comparable across waiters.
private enum Outcome: Equatable {
    case bytes(Int)
    case error(MemWallError.Code)

    init(_ r: Result<TransferReport, MemWallError>) {
        switch r {
        case .success(let report): self = .bytes(report.bytes)
        case .failure(let e): self = .error(e.code)
        }
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
