import MemWallCore
import Transport

/// The one conformance suite every ``Transport`` passes.
///
/// Usage from a test target (Swift Testing):
/// ```swift
/// @Test(arguments: TransportConformance.applicableChecks(for: fixture))
/// func conformance(_ check: ConformanceCheck) async throws {
///     let outcome = try await TransportConformance.run(check, on: fixture)
///     if case .skipped(let why) = outcome { Issue.record("\(check) should apply: \(why)") }
/// }
/// // Checks that do not apply are one visible skip with their reasons (a
/// // cancelled *case* of a parameterized test is reported as passed by swift test):
/// @Test func checksThatDoNotApply() throws {
///     try Test.cancel(Comment(rawValue: try #require(TransportConformance.skippedChecksSummary(for: fixture))))
/// }
/// ```
/// A broken promise throws ``ConformanceFailure``; a check that does not apply
/// returns ``ConformanceOutcome/skipped(_:)`` with the reason.
public enum TransportConformance {
    /// Bytes of target every check asks the fixture for.
    public static let targetSize = 8 << 20

    /// Runs one check.
    /// - Throws: ``ConformanceFailure`` when the transport breaks the contract,
    ///   or the `MemWallError` of a set-up step that should not fail.
    public static func run(_ check: ConformanceCheck, on fixture: ConformanceFixture) async throws -> ConformanceOutcome {
        let c = Checker(check: check, fixture: fixture)
        switch check {
        case .roundTrip: return try await c.roundTrip()
        case .scatterGather: return try await c.scatterGather()
        case .repost: return try await c.repost()
        case .boundsErrors: return try c.boundsErrors()
        case .alignmentErrors: return try c.alignmentErrors()
        case .registration: return try await c.registration()
        case .concurrentPosts: return try await c.concurrentPosts()
        case .cancellation: return try await c.cancellation()
        case .taskCancellation: return try await c.taskCancellation()
        case .faultInterrupted: return try await c.fault(.error(.interrupted), expectFailure: nil)
        case .faultWouldBlock: return try await c.fault(.error(.wouldBlock), expectFailure: nil)
        case .faultShortTransfer: return try await c.fault(.short(fraction: 0.5), expectFailure: nil)
        case .faultNoMemory: return try await c.fault(.error(.noMemory), expectFailure: .noMemory)
        case .faultIOError: return try await c.fault(.error(.ioError), expectFailure: .ioError)
        case .noLeak: return try await c.noLeak()
        }
    }

    /// Why `check` does not apply to `fixture`, or `nil` when it does. Decided
    /// from the fixture alone, so a test target can run only the checks that
    /// apply and report the others as skipped with this reason.
    public static func inapplicability(of check: ConformanceCheck, for fixture: ConformanceFixture) -> String? {
        switch check {
        case .alignmentErrors where fixture.alignment <= 1:
            return "\(fixture.name) accepts any alignment (memory or buffered target), so there is no misalignment to refuse"
        case .faultInterrupted, .faultWouldBlock, .faultShortTransfer, .faultNoMemory, .faultIOError:
            return fixture.faultPoints.isEmpty
                ? "\(fixture.name) \(fixture.noFaultPointsReason), so there is no funnel result to fault"
                : nil
        default:
            return nil
        }
    }

    /// The checks that apply to `fixture`, in suite order.
    public static func applicableChecks(for fixture: ConformanceFixture, among checks: [ConformanceCheck] = ConformanceCheck.allCases) -> [ConformanceCheck] {
        checks.filter { inapplicability(of: $0, for: fixture) == nil }
    }

    /// One line naming every check that does not apply to `fixture` and why; `nil` when all apply.
    public static func skippedChecksSummary(for fixture: ConformanceFixture, among checks: [ConformanceCheck] = ConformanceCheck.allCases) -> String? {
        let skipped = checks.compactMap { c in inapplicability(of: c, for: fixture).map { "\(c): \($0)" } }
        return skipped.isEmpty ? nil : skipped.joined(separator: "; ")
    }

    /// Runs every check in order and returns each outcome; stops at the first failure.
    public static func runConformance(
        name: String = "transport",
        alignment: Int,
        faultPoints: [TransferOperation: String],
        makeTransport: @escaping @Sendable (_ funnel: SyscallFunnel) throws(MemWallError) -> any Transport,
        makeTarget: @escaping @Sendable (_ byteCount: Int) throws(MemWallError) -> TransferTarget
    ) async throws -> [ConformanceCheck: ConformanceOutcome] {
        let fixture = ConformanceFixture(name: name, alignment: alignment, faultPoints: faultPoints,
                                         makeTransport: makeTransport, makeTarget: makeTarget)
        var out: [ConformanceCheck: ConformanceOutcome] = [:]
        for check in ConformanceCheck.allCases { out[check] = try await run(check, on: fixture) }
        return out
    }
}

/// A deterministic byte pattern: every 8-byte word depends on a seed and its
/// position, so a misplaced or stale block can never match by chance.
enum Pattern {
    static func fill(_ region: MemoryRegion, offset: Int, length: Int, seed: UInt64) {
        region.withUnsafeMutableBytes(offset: offset, length: length) { buf in
            var x = seed &* 0x9E37_79B9_7F4A_7C15 | 1
            for i in 0..<buf.count {
                if i % 8 == 0 {
                    x ^= x << 13; x ^= x >> 7; x ^= x << 17
                }
                buf[i] = UInt8(truncatingIfNeeded: x >> ((UInt64(i) % 8) * 8))
            }
        }
    }

    static func zero(_ region: MemoryRegion) {
        region.withUnsafeMutableBytes { _ = $0.initializeMemory(as: UInt8.self, repeating: 0) }
    }

    /// Index of the first differing byte, or nil when equal.
    static func firstDifference(_ a: MemoryRegion, _ aOffset: Int, _ b: MemoryRegion, _ bOffset: Int, length: Int) -> Int? {
        a.withUnsafeBytes(offset: aOffset, length: length) { x in
            b.withUnsafeBytes(offset: bOffset, length: length) { y in
                if memcmp(x.baseAddress!, y.baseAddress!, length) == 0 { return nil }
                for i in 0..<length where x[i] != y[i] { return i }
                return nil
            }
        }
    }
}

#if canImport(Glibc)
import Glibc
#endif

/// One run of one check: shared helpers plus the checks themselves.
struct Checker {
    let check: ConformanceCheck
    let fixture: ConformanceFixture
    var a: Int { fixture.alignment }

    init(check: ConformanceCheck, fixture: ConformanceFixture) {
        self.check = check
        self.fixture = fixture
    }

    func fail(_ message: String) -> ConformanceFailure {
        ConformanceFailure(check: check, message: "\(fixture.name): \(message)")
    }

    func expect(_ condition: Bool, _ message: @autoclosure () -> String) throws(ConformanceFailure) {
        if !condition { throw fail(message()) }
    }

    /// Runs `body`, which must throw a MemWallError with `code`.
    func expectError(_ code: MemWallError.Code, _ what: String, _ body: () throws(MemWallError) -> Void) throws(ConformanceFailure) {
        do {
            try body()
        } catch {
            guard error.code == code else {
                throw fail("\(what): expected error \(code), got \(error.code): \(error)")
            }
            guard !error.message.isEmpty else { throw fail("\(what): error \(code) has no message") }
            return
        }
        throw fail("\(what): expected error \(code), but it succeeded")
    }

    /// A source and a destination region of `bytes` each, both registered with `t`
    /// (the set-up most checks share).
    func registeredPair(_ bytes: Int, on t: any Transport) throws -> (MemoryRegion, MemoryRegion) {
        let src = try fixture.makeLocal(bytes)
        let dst = try fixture.makeLocal(bytes)
        try t.register(src)
        try t.register(dst)
        return (src, dst)
    }

    /// A fresh transport and target, and a registered pair of `pieces` pieces
    /// of at least `piece` bytes (whole alignment units), the source filled
    /// with `seed`'s pattern: the set-up of the multi-descriptor checks.
    func piecesSetUp(pieces: Int, piece minimum: Int, seed: UInt64) throws
        -> (t: any Transport, target: TransferTarget, src: MemoryRegion, dst: MemoryRegion, piece: Int) {
        let t = try fixture.makeTransport(.system)
        let target = try fixture.makeTarget(TransportConformance.targetSize, t)
        let piece = max(a, minimum)
        let (src, dst) = try registeredPair(pieces * piece, on: t)
        Pattern.fill(src, offset: 0, length: pieces * piece, seed: seed)
        return (t, target, src, dst, piece)
    }

    /// Writes `length` patterned bytes from a fresh local region to the target
    /// at `targetOffset`, reads them back into another region, compares.
    func writeThenRead(_ t: any Transport, target: TransferTarget, length: Int, localOffset: Int,
                       targetOffset: Int64, seed: UInt64) async throws {
        let (src, dst) = try registeredPair(localOffset + length, on: t)
        defer { try? t.deregister(src); try? t.deregister(dst) }
        Pattern.fill(src, offset: localOffset, length: length, seed: seed)
        Pattern.zero(dst)
        try await t.transfer(.write, [TransferDescriptor(local: src, localOffset: localOffset, target: target,
                                                         targetOffset: targetOffset, length: length)])
        let report = try await t.transfer(.read, [TransferDescriptor(local: dst, localOffset: localOffset, target: target,
                                                                     targetOffset: targetOffset, length: length)])
        try expect(report.bytes == length, "read of \(length) bytes reported \(report.bytes)")
        if let i = Pattern.firstDifference(src, localOffset, dst, localOffset, length: length) {
            throw fail("data read differs from data written at byte \(i) of \(length) (target offset \(targetOffset), local offset \(localOffset))")
        }
    }

    // MARK: checks

    func roundTrip() async throws -> ConformanceOutcome {
        let t = try fixture.makeTransport(.system)
        let target = try fixture.makeTarget(TransportConformance.targetSize, t)
        var sizes = [a, 4096, 3 * 4096, 64 * 1024 + a, 1 << 20, 3 << 20]
        var offsets = [0, a, 7 * a, (1 << 20) - a]
        if a == 1 { sizes += [1, 7, 4095, 65_537]; offsets += [3, 4097] }
        sizes = Array(Set(sizes.map { max(a, $0 / a * a) })).sorted()
        offsets = Array(Set(offsets)).sorted()
        var cases = 0
        for (i, size) in sizes.enumerated() {
            for (j, off) in offsets.enumerated() where Int64(off + size) <= target.byteCount {
                let localOffset = (i + j) % 3 * a
                try await writeThenRead(t, target: target, length: size, localOffset: localOffset,
                                        targetOffset: Int64(off), seed: UInt64(i * 100 + j + 1))
                cases += 1
            }
        }
        return .passed("\(cases) size/offset combinations from \(a) B to \(ByteCount(sizes.last ?? 0))")
    }

    func scatterGather() async throws -> ConformanceOutcome {
        let pieces = 8
        let (t, target, src, dst, piece) = try piecesSetUp(pieces: pieces, piece: 16 * 1024, seed: 42)
        Pattern.zero(dst)
        // Pieces land in reverse order, spread out, so a transport that ignores offsets fails.
        func list(_ region: MemoryRegion) -> [TransferDescriptor] {
            (0..<pieces).map { k in
                TransferDescriptor(local: region, localOffset: k * piece, target: target,
                                   targetOffset: Int64((pieces - 1 - k) * 2 * piece), length: piece)
            }
        }
        let w = try t.post(try t.prepare(.write, list(src)))
        let wr = try await w.wait()
        try expect(wr.descriptorCount == pieces && wr.bytes == pieces * piece,
                   "write report says \(wr.bytes) bytes over \(wr.descriptorCount) descriptors, expected \(pieces * piece) over \(pieces)")
        try expect(w.descriptorStatuses.allSatisfy { $0 == .completed }, "write statuses \(w.descriptorStatuses)")
        try expect(w.poll() == .completed, "poll() after wait says \(w.poll())")
        let r = try t.post(try t.prepare(.read, list(dst)))
        try await r.wait()
        try expect(r.descriptorStatuses.allSatisfy { $0 == .completed }, "read statuses \(r.descriptorStatuses)")
        if let i = Pattern.firstDifference(src, 0, dst, 0, length: pieces * piece) {
            throw fail("scatter/gather data differs at byte \(i)")
        }
        try t.deregister(src); try t.deregister(dst)
        return .passed("\(pieces) descriptors per request, per-descriptor status checked")
    }

    func repost() async throws -> ConformanceOutcome {
        let t = try fixture.makeTransport(.system)
        let target = try fixture.makeTarget(TransportConformance.targetSize, t)
        let n = max(a, 32 * 1024)
        let (src, dst) = try registeredPair(n, on: t)
        let write = try t.prepare(.write, [TransferDescriptor(local: src, target: target, targetOffset: Int64(a), length: n)])
        let read = try t.prepare(.read, [TransferDescriptor(local: dst, target: target, targetOffset: Int64(a), length: n)])
        let rounds = 10
        for round in 0..<rounds {
            Pattern.fill(src, offset: 0, length: n, seed: UInt64(round + 1000))
            Pattern.zero(dst)
            try await t.post(write).wait()
            try await t.post(read).wait()
            if let i = Pattern.firstDifference(src, 0, dst, 0, length: n) {
                throw fail("post \(round) of a prepared list: data differs at byte \(i)")
            }
        }
        try t.deregister(src); try t.deregister(dst)
        return .passed("one prepared write/read pair posted \(rounds) times")
    }

    func boundsErrors() throws -> ConformanceOutcome {
        let t = try fixture.makeTransport(.system)
        let target = try fixture.makeTarget(TransportConformance.targetSize, t)
        let local = try fixture.makeLocal(64 * 1024)
        try t.register(local)
        let end = target.byteCount
        try expectError(.outOfBounds, "target range past the end") { () throws(MemWallError) in
            _ = try t.prepare(.read, [TransferDescriptor(local: local, target: target, targetOffset: end - Int64(a), length: 2 * a)])
        }
        try expectError(.outOfBounds, "negative target offset") { () throws(MemWallError) in
            _ = try t.prepare(.read, [TransferDescriptor(local: local, target: target, targetOffset: -Int64(a), length: a)])
        }
        try expectError(.outOfBounds, "local range past the region") { () throws(MemWallError) in
            _ = try t.prepare(.write, [TransferDescriptor(local: local, localOffset: 64 * 1024 - a, target: target, length: 2 * a)])
        }
        try expectError(.invalidArgument, "zero length") { () throws(MemWallError) in
            _ = try t.prepare(.write, [TransferDescriptor(local: local, target: target, length: 0)])
        }
        try expectError(.invalidArgument, "empty descriptor list") { () throws(MemWallError) in
            _ = try t.prepare(.write, [])
        }
        try t.deregister(local)
        return .passed("past-end, negative, local overflow, zero length and empty list refused")
    }

    func alignmentErrors() throws -> ConformanceOutcome {
        if let why = TransportConformance.inapplicability(of: check, for: fixture) { return .skipped(why) }
        let t = try fixture.makeTransport(.system)
        let target = try fixture.makeTarget(TransportConformance.targetSize, t)
        let local = try fixture.makeLocal(64 * 1024)
        try t.register(local)
        try expectError(.misaligned, "target offset not a multiple of \(a)") { () throws(MemWallError) in
            _ = try t.prepare(.read, [TransferDescriptor(local: local, target: target, targetOffset: Int64(a / 2), length: a)])
        }
        try expectError(.misaligned, "length not a multiple of \(a)") { () throws(MemWallError) in
            _ = try t.prepare(.read, [TransferDescriptor(local: local, target: target, length: a + 1)])
        }
        try expectError(.misaligned, "buffer address not a multiple of \(a)") { () throws(MemWallError) in
            _ = try t.prepare(.write, [TransferDescriptor(local: local, localOffset: 1, target: target, length: a)])
        }
        try t.deregister(local)
        return .passed("offset, length and buffer misalignment refused with `misaligned`")
    }

    func registration() async throws -> ConformanceOutcome {
        let t = try fixture.makeTransport(.system)
        let target = try fixture.makeTarget(TransportConformance.targetSize, t)
        let local = try fixture.makeLocal(64 * 1024)
        try expectError(.notFound, "prepare with an unregistered region") { () throws(MemWallError) in
            _ = try t.prepare(.write, [TransferDescriptor(local: local, target: target, length: a)])
        }
        try expectError(.notFound, "deregister a region never registered") { () throws(MemWallError) in
            try t.deregister(local)
        }
        try t.register(local)
        try expectError(.alreadyExists, "register the same region twice") { () throws(MemWallError) in
            try t.register(local)
        }
        let prepared = try t.prepare(.write, [TransferDescriptor(local: local, target: target, length: max(a, 4096))])
        try await t.post(prepared).wait()
        try t.deregister(local)
        try expectError(.notFound, "post after the region was deregistered") { () throws(MemWallError) in
            _ = try t.post(prepared)
        }
        // Registering again after deregistering is allowed and works.
        try t.register(local)
        try await t.post(try t.prepare(.write, [TransferDescriptor(local: local, target: target, length: max(a, 4096))])).wait()
        try t.deregister(local)
        return .passed("unregistered, double registration, stale prepared list and re-registration")
    }

    func concurrentPosts() async throws -> ConformanceOutcome {
        let t = try fixture.makeTransport(.system)
        let target = try fixture.makeTarget(TransportConformance.targetSize, t)
        let tasks = 16
        let rounds = 6
        let slot = max(a, 64 * 1024)
        let check = self
        try await withThrowingTaskGroup(of: Void.self) { group in
            for k in 0..<tasks {
                group.addTask {
                    let (src, dst) = try registeredPair(slot, on: t)
                    let w = try t.prepare(.write, [TransferDescriptor(local: src, target: target, targetOffset: Int64(k * slot), length: slot)])
                    let r = try t.prepare(.read, [TransferDescriptor(local: dst, target: target, targetOffset: Int64(k * slot), length: slot)])
                    for round in 0..<rounds {
                        Pattern.fill(src, offset: 0, length: slot, seed: UInt64(k * 1000 + round + 1))
                        Pattern.zero(dst)
                        try await t.post(w).wait()
                        try await t.post(r).wait()
                        if let i = Pattern.firstDifference(src, 0, dst, 0, length: slot) {
                            throw check.fail("task \(k) round \(round): data differs at byte \(i) (another task's range leaked in?)")
                        }
                    }
                    try t.deregister(src); try t.deregister(dst)
                }
            }
            try await group.waitForAll()
        }
        return .passed("\(tasks) tasks × \(rounds) write/read rounds on disjoint ranges")
    }

    func cancellation() async throws -> ConformanceOutcome {
        let pieces = 64
        let (t, target, src, dst, piece) = try piecesSetUp(pieces: pieces, piece: 64 * 1024, seed: 7)
        // Known contents first, so a cancelled descriptor's range can be told apart.
        try await t.transfer(.write, [TransferDescriptor(local: src, target: target, length: pieces * piece)])
        let list = (0..<pieces).map { k in
            TransferDescriptor(local: dst, localOffset: k * piece, target: target, targetOffset: Int64(k * piece), length: piece)
        }
        Pattern.zero(dst)
        let request = try t.post(try t.prepare(.read, list))
        request.cancel()
        request.cancel()  // idempotent
        var threw: MemWallError?
        do { try await request.wait() } catch { threw = error }
        let statuses = request.descriptorStatuses
        try expect(statuses.allSatisfy(\.isFinal), "wait() returned with pending descriptors: \(statuses)")
        let cancelled = statuses.filter { $0 == .cancelled }.count
        let completed = statuses.filter { $0 == .completed }.count
        try expect(cancelled + completed == pieces, "after cancel, statuses other than completed/cancelled: \(statuses)")
        if cancelled > 0 {
            try expect(threw?.code == .cancelled, "wait() after a cancelled descriptor threw \(String(describing: threw))")
            try expect(request.poll() == .cancelled, "poll() says \(request.poll()) with \(cancelled) cancelled descriptors")
        } else {
            try expect(threw == nil, "all descriptors completed but wait() threw \(String(describing: threw))")
        }
        for (k, s) in statuses.enumerated() where s == .completed {
            if let i = Pattern.firstDifference(src, k * piece, dst, k * piece, length: piece) {
                throw fail("descriptor \(k) completed after cancel but its data differs at byte \(i)")
            }
        }
        // The transport is still usable after a cancellation.
        try await writeThenRead(t, target: target, length: piece, localOffset: 0, targetOffset: 0, seed: 99)
        try t.deregister(src); try t.deregister(dst)
        return .passed("\(cancelled) of \(pieces) descriptors cancelled, \(completed) completed with correct data")
    }

    func taskCancellation() async throws -> ConformanceOutcome {
        let t = try fixture.makeTransport(.system)
        let target = try fixture.makeTarget(TransportConformance.targetSize, t)
        let pieces = 64
        let piece = max(a, 64 * 1024)
        let dst = try fixture.makeLocal(pieces * piece)
        try t.register(dst)
        let list = (0..<pieces).map { k in
            TransferDescriptor(local: dst, localOffset: k * piece, target: target, targetOffset: Int64(k * piece), length: piece)
        }
        let request = try t.post(try t.prepare(.read, list))
        let task = Task { () async throws(MemWallError) -> TransferReport in try await request.wait() }
        task.cancel()
        let result = await task.result
        try expect(request.descriptorStatuses.allSatisfy(\.isFinal), "the awaiting task returned before every descriptor was final")
        switch result {
        case .success(let report):
            try expect(report.bytes == pieces * piece, "uncancelled request moved \(report.bytes) bytes")
        case .failure(let e):
            let code = (e as? MemWallError)?.code
            try expect(code == .cancelled, "task cancellation surfaced as \(e)")
        }
        try t.deregister(dst)
        return .passed("cancelling the awaiting task cancels the request and still waits for in-flight descriptors")
    }

    func fault(_ injected: InjectedFault, expectFailure: Errno?) async throws -> ConformanceOutcome {
        if let why = TransportConformance.inapplicability(of: check, for: fixture) { return .skipped(why) }
        var notes: [String] = []
        for op in [TransferOperation.write, .read] {
            guard let function = fixture.faultPoints[op] else { continue }
            // Armed only once the target exists and its data is in place, so the
            // fault hits the data path, not connection set-up or the preparing write.
            let injector = FaultInjector([.init(function, injected, after: 0, times: 1)], armed: false)
            // EINTR must be handled by the transport when it arrives as a
            // completion result, so the funnel does not retry it for us.
            let funnel = SyscallFunnel(faults: injector, retryOnInterrupt: false)
            let t = try fixture.makeTransport(funnel)
            let target = try fixture.makeTarget(TransportConformance.targetSize, t)
            let n = max(a, 64 * 1024)
            let (src, dst) = try registeredPair(n, on: t)
            Pattern.fill(src, offset: 0, length: n, seed: 5)
            Pattern.zero(dst)
            let write = [TransferDescriptor(local: src, target: target, targetOffset: Int64(a), length: n)]
            let read = [TransferDescriptor(local: dst, target: target, targetOffset: Int64(a), length: n)]
            if op == .read {
                // Put the data there first; the fault is armed for reads only.
                try await t.transfer(.write, write)
            }
            let prepared = try t.prepare(op, op == .write ? write : read)
            injector.arm()
            let request = try t.post(prepared)
            var threw: MemWallError?
            do { try await request.wait() } catch { threw = error }
            try expect(injector.firedCount(function) >= 1, "the injected \(injected) on \(function) never fired")
            if let expected = expectFailure {
                guard let e = threw else { throw fail("\(op) with injected \(injected) succeeded; expected it to fail with \(expected.name)") }
                try expect(e.errno == expected, "\(op) with injected \(injected) failed with errno \(String(describing: e.errno)), expected \(expected.name): \(e)")
                // Over a connection a hard error leaves the byte stream out of step,
                // so the connection closes (`disconnected`, still with the errno), as
                // an RDMA queue pair enters the error state; the transport must then
                // work over a new connection. Local targets stay usable as they are.
                var isRemote = false
                if case .remote = target { isRemote = true }
                let closesConnection = isRemote && e.code == .disconnected
                try expect(e.code == .systemCall || closesConnection,
                           "\(op) with injected \(injected) has code \(e.code), expected system-call\(isRemote ? " or disconnected" : "")")
                try expect(e.function != nil, "error for injected \(injected) does not name the failing call")
                guard case .failed = request.status(ofDescriptor: 0) else {
                    throw fail("descriptor status after injected \(injected) is \(request.status(ofDescriptor: 0))")
                }
                // The fault is spent: the same transport must now move the data correctly.
                let again = closesConnection ? try fixture.makeTarget(TransportConformance.targetSize, t) : target
                let writeAgain = write.map { TransferDescriptor(local: $0.local, target: again, targetOffset: $0.targetOffset, length: $0.length) }
                let readAgain = read.map { TransferDescriptor(local: $0.local, target: again, targetOffset: $0.targetOffset, length: $0.length) }
                if op == .write || closesConnection { try await t.transfer(.write, writeAgain) }
                try await t.transfer(.read, readAgain)
            } else {
                if let threw { throw fail("\(op) with injected \(injected) should have been handled but failed: \(threw)") }
                if op == .write { try await t.transfer(.read, read) }
            }
            if let i = Pattern.firstDifference(src, 0, dst, 0, length: n) {
                throw fail("after injected \(injected) on \(function), data differs at byte \(i)")
            }
            try t.deregister(src); try t.deregister(dst)
            notes.append("\(function): \(injected) fired \(injector.firedCount(function))×")
        }
        return .passed(notes.joined(separator: "; "))
    }

    func noLeak() async throws -> ConformanceOutcome {
        weak var weakTransport: (any Transport)?
        weak var weakRegion: MemoryRegion?
        weak var weakRequest: TransferRequest?
        weak var weakFailedRegion: MemoryRegion?
        do {
            let t = try fixture.makeTransport(.system)
            weakTransport = t
            let target = try fixture.makeTarget(TransportConformance.targetSize, t)
            let region = try fixture.makeLocal(max(a, 64 * 1024))
            weakRegion = region
            try t.register(region)
            let request = try t.post(try t.prepare(.write, [TransferDescriptor(local: region, target: target, length: region.byteCount)]))
            weakRequest = request
            try await request.wait()
            try t.deregister(region)
            // A request that fails in prepare must not keep its region either.
            let other = try fixture.makeLocal(max(a, 64 * 1024))
            weakFailedRegion = other
            try t.register(other)
            _ = try? t.prepare(.write, [TransferDescriptor(local: other, target: target, targetOffset: target.byteCount, length: a)])
            try t.deregister(other)
        }
        // Completion threads may drop their last reference a moment after
        // waking the waiter; give them a bounded grace period.
        for _ in 0..<200 where weakTransport != nil || weakRegion != nil || weakRequest != nil || weakFailedRegion != nil {
            try await Task.sleep(nanoseconds: 5_000_000)
        }
        try expect(weakRequest == nil, "a finished request is still referenced after its owner dropped it")
        try expect(weakRegion == nil, "a deregistered region is still referenced (memory leak, or a buffer kept by the transport)")
        try expect(weakFailedRegion == nil, "a region used only in a refused prepare is still referenced")
        try expect(weakTransport == nil, "the transport is still alive after its last user dropped it (reference cycle or stuck thread)")
        return .passed("request, regions and transport freed after release")
    }
}
