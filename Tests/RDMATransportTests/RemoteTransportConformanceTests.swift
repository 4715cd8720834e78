import MemWallCore
@testable import RDMATransport
import Synchronization
import Testing
import Transport
import TransportConformance

/// Read-write slots a peer exported, handed out one per conformance target so
/// checks running in parallel never share remote memory.
///
/// Each target is resolved over a new connection opened by the transport
/// under test (a segment is only usable by the transport that resolved it).
final class RemoteSlotPool: Sendable {
    static let slotBytes = TransportConformance.targetSize

    let address: String
    let port: UInt16
    let names: [String]
    private let next = Atomic<Int>(0)
    /// The server transport or process; kept alive, never touched after init.
    nonisolated(unsafe) private let peerOwner: AnyObject

    /// The path every connection must get, by name; nil accepts any.
    let path: String?

    private init(address: String, port: UInt16, names: [String], peerOwner: AnyObject, path: String? = nil) {
        self.address = address
        self.port = port
        self.names = names
        self.peerOwner = peerOwner
        self.path = path
    }

    static func slotNames(_ count: Int) -> [String] { (0 ..< count).map { "conformance/slot-\($0)" } }

    /// A TCP emulation server in this process exporting `count` read-write slots on 127.0.0.1.
    static func inProcessTCP(slots count: Int) throws(MemWallError) -> RemoteSlotPool {
        let server = try TCPEmulationTransport(options: RemoteTransportOptions(intraHost: .off))
        let names = slotNames(count)
        for name in names {
            let r = try MemoryRegion.allocate(byteCount: slotBytes)
            try server.register(r)
            try server.export(r, as: name, access: [.read, .write])
        }
        return RemoteSlotPool(address: "127.0.0.1", port: try server.listen(address: "127.0.0.1", port: 0), names: names, peerOwner: server)
    }

    /// `memwall rdma-serve` in a second process exporting `count` read-write slots on `address`.
    /// - Parameter path: When given, every connection must reach the peer on a path of this name
    ///   ("intra-host"), so the suite cannot pass on another path by accident.
    static func serveProcess(slots count: Int, address: String, arguments: [String], path: String? = nil) throws -> RemoteSlotPool {
        let names = slotNames(count)
        let serve = try ServeProcess(arguments: arguments + ["--address", address] + names.flatMap { ["--export", "\($0):\(slotBytes >> 20)M:rw"] })
        return RemoteSlotPool(address: address, port: serve.port, names: names, peerOwner: serve, path: path)
    }

    /// A fresh slot of the peer, resolved through `transport`'s own connection.
    func target(_ byteCount: Int, for transport: any Transport) throws(MemWallError) -> TransferTarget {
        guard let remote = transport as? any RemoteMemoryTransport else {
            throw MemWallError(.invalidArgument, "'\(transport.name)' cannot open connections; expected a remote memory transport")
        }
        guard byteCount <= Self.slotBytes else {
            throw MemWallError(.outOfBounds, "a target of \(ByteCount(byteCount)) does not fit a slot of \(ByteCount(Self.slotBytes))")
        }
        let i = next.wrappingAdd(1, ordering: .relaxed).oldValue
        guard i < names.count else {
            throw MemWallError(.outOfBounds, "all \(names.count) exported slots are in use; export more for this many targets")
        }
        let peer = try remote.connect(address: address, port: port, timeout: .seconds(30))
        if let path, peer.path.name != path {
            throw MemWallError(.unsupported, "the peer was expected on the \(path) path, but got \(peer.path)")
        }
        return .remote(try peer.segment(named: names[i]))
    }
}

/// Pools are made once per suite, on first use; a failure is reported by every check.
final class LazyPool: Sendable {
    private let make: @Sendable () throws -> RemoteSlotPool
    private let pool = Mutex<Result<RemoteSlotPool, MemWallError>?>(nil)

    init(_ make: @escaping @Sendable () throws -> RemoteSlotPool) { self.make = make }

    func target(_ byteCount: Int, for transport: any Transport) throws(MemWallError) -> TransferTarget {
        let p = pool.withLock { p -> Result<RemoteSlotPool, MemWallError> in
            if let p { return p }
            let made: Result<RemoteSlotPool, MemWallError>
            do { made = .success(try make()) } catch let e as MemWallError { made = .failure(e) } catch {
                made = .failure(MemWallError(.unsupported, "cannot start the peer: \(error)"))
            }
            p = made
            return made
        }
        return try p.get().target(byteCount, for: transport)
    }
}

/// The one Transport conformance suite on the TCP emulation: the transport
/// under test connects to a server exporting read-write slots on 127.0.0.1,
/// and faults are injected on the client's socket reads and writes.
@Suite(.timeLimit(.minutes(5)))
struct TCPEmulationConformanceTests {
    // Targets: 9 non-fault checks + 2 per fault check per direction (one more after a hard fault).
    static let pool = LazyPool { try RemoteSlotPool.inProcessTCP(slots: 40) }

    static let fixture = ConformanceFixture(
        name: "tcp-emulation to a peer on 127.0.0.1",
        alignment: 1,
        faultPoints: [.read: "read", .write: "write"],
        makeTransport: { funnel throws(MemWallError) in
            try TCPEmulationTransport(options: RemoteTransportOptions(operationTimeout: .seconds(30), intraHost: .off), funnel: funnel)
        },
        makeTargetFor: { n, t throws(MemWallError) in try pool.target(n, for: t) })

    @Test(arguments: TransportConformance.applicableChecks(for: fixture))
    func conformance(_ check: ConformanceCheck) async throws {
        try await runConformanceCheck(check, on: Self.fixture)
    }

    @Test func checksThatDoNotApply() throws {
        try skipInapplicableChecks(of: Self.fixture)
    }
}

/// One conformance case on one of the intra-host fixtures.
struct IntraHostConformanceCase: Sendable, CustomTestStringConvertible {
    let fixture: ConformanceFixture
    let check: ConformanceCheck
    var testDescription: String { "\(check) — \(fixture.name)" }
}

/// The same suite on the intra-host path, twice: the transport under test
/// connects to `memwall rdma-serve --transport tcp` in a second process on this
/// host (every connection is checked to be on that path), whose exports are
/// shared memory — mapped here and copied with memcpy, no system call to fault
/// — or, with `--memory private`, anonymous memory reached with
/// process_vm_readv/writev, on which faults are injected.
@Suite(.timeLimit(.minutes(5)),
       .enabled(if: ServeProcess.executable != nil, "needs the memwall executable built next to the tests (swift build)"),
       .enabled(if: IntraHostSupport.unavailableReason == nil, "process_vm_readv is refused in this process (seccomp)"))
struct IntraHostConformanceTests {
    static func fixture(memory: String, slots: Int, faultPoints: [TransferOperation: String], noFaultPointsReason: String = "") -> ConformanceFixture {
        let pool = LazyPool {
            try RemoteSlotPool.serveProcess(slots: slots, address: "127.0.0.1", arguments: ["--transport", "tcp", "--memory", memory], path: "intra-host")
        }
        return ConformanceFixture(
            name: "intra-host path to a second process (\(memory) memory)",
            alignment: 1,
            faultPoints: faultPoints,
            noFaultPointsReason: noFaultPointsReason,
            makeTransport: { funnel throws(MemWallError) in
                try TCPEmulationTransport(options: RemoteTransportOptions(operationTimeout: .seconds(30)), funnel: funnel)
            },
            makeTargetFor: { n, t throws(MemWallError) in try pool.target(n, for: t) })
    }

    static let fixtures = [
        fixture(memory: "shared", slots: 12, faultPoints: [:],
                noFaultPointsReason: "copies with memcpy into the peer's memfd mapped here, with no system call per transfer (the private-memory fixture faults process_vm_readv/writev)"),
        fixture(memory: "private", slots: 40, faultPoints: [.read: "process_vm_readv", .write: "process_vm_writev"]),
    ]

    @Test(arguments: fixtures.flatMap { f in TransportConformance.applicableChecks(for: f).map { IntraHostConformanceCase(fixture: f, check: $0) } })
    func conformance(_ c: IntraHostConformanceCase) async throws {
        try await runConformanceCheck(c.check, on: c.fixture)
    }

    @Test func checksThatDoNotApply() throws {
        let summary = Self.fixtures.compactMap { TransportConformance.skippedChecksSummary(for: $0) }.joined(separator: "; ")
        try Test.cancel(Comment(rawValue: try #require(summary.isEmpty ? nil : summary, "every check applies; remove this test")))
    }
}

/// The same suite on RDMA verbs over soft-RoCE in the lab guest, against
/// `memwall rdma-serve` in a second process, connected through librdmacm.
@Suite(.enabled(if: inLab, "runs in the lab guest (make lab)"), .timeLimit(.minutes(10)),
       .enabled(if: ServeProcess.executable != nil, "needs the memwall executable built next to the tests (swift build)"))
struct RDMAConformanceInLab {
    static let pool = LazyPool {
        try RemoteSlotPool.serveProcess(slots: 12, address: labAddress, arguments: ["--transport", "rdma", "--device", labDevice, "--cm", labManager.rawValue])
    }

    static let fixture = ConformanceFixture(
        name: "rdma on \(labDevice) to a second process (\(labManager.rawValue))",
        alignment: 1,
        faultPoints: [:],
        noFaultPointsReason: "posts work requests to the NIC on its data path, with no system call per transfer (peer loss and remote access errors are the RDMA fault tests)",
        makeTransport: { _ throws(MemWallError) in
            // Generous: under TCG, with checks in parallel on two vCPUs, soft-RoCE is slow.
            try makeRDMA(RemoteTransportOptions(operationTimeout: .seconds(60)))
        },
        makeTargetFor: { n, t throws(MemWallError) in try pool.target(n, for: t) })

    @Test(arguments: TransportConformance.applicableChecks(for: fixture))
    func conformance(_ check: ConformanceCheck) async throws {
        try await runConformanceCheck(check, on: Self.fixture)
    }

    @Test func checksThatDoNotApply() throws {
        try skipInapplicableChecks(of: Self.fixture)
    }
}
