import ArgumentParser
#if canImport(Glibc)
import Glibc
#endif
import FoundationEssentials
import MemWallCore
import RDMATransport
import Transport

/// Which remote transport a command uses.
enum RemoteTransportKind: String, ExpressibleByArgument, CaseIterable {
    /// RDMA verbs on a device.
    case rdma
    /// The TCP emulation (labelled emulation in every output).
    case tcp
}

/// Options shared by `memwall rdma-serve` and `memwall bench rdma` to pick and open a transport.
struct RemoteTransportSelection: ParsableArguments {
    @Option(name: .long, help: "rdma or tcp (the emulation). Default: rdma when an RDMA device exists, else tcp.")
    var transport: RemoteTransportKind?

    @Option(name: .long, help: "RDMA device (default: the first one, e.g. rxe0).")
    var device: String?

    @Option(name: .long, help: "RDMA connection setup: rdmacm (default), or socket (queue pairs exchanged over TCP, as perftest does without -R; works for soft-RoCE on lo, where rdmacm cannot route).")
    var cm: String?

    @Option(name: .long, help: "Send-queue depth (outstanding work requests per connection).")
    var sqDepth: Int = 256

    @Option(name: .long, help: "TCP only: peers on this host reached with process_vm_readv/writev instead of TCP — automatic (default: when the peer proves it is on this host and the kernel allows it), off, or grant-same-user (a server also lets processes of its user attach under YAMA ptrace_scope 1).")
    var intraHost: String?

    func validate() throws {
        try OptionCheck.inRange("--sq-depth", sqDepth, 2 ... 16384, unit: "work requests")
        if let cm, RDMAConnectionManager(rawValue: cm) == nil {
            throw ValidationError("invalid --cm '\(cm)': expected rdmacm or socket")
        }
        if let intraHost, IntraHostPolicy(rawValue: intraHost) == nil {
            throw ValidationError("invalid --intra-host '\(intraHost)': expected automatic, off or grant-same-user")
        }
    }

    /// The transport kind after defaults.
    var resolvedKind: RemoteTransportKind {
        transport ?? (RDMATransport.availableDevices().isEmpty ? .tcp : .rdma)
    }

    /// Where a server on this host listens by default: the first IPv4 address
    /// the RDMA device serves (loopback has no RDMA route unless a device is
    /// bound to lo), 127.0.0.1 for the TCP emulation.
    static func defaultAddress(for transport: any RemoteMemoryTransport) -> String {
        (transport as? RDMATransport)?.localAddresses.first ?? "127.0.0.1"
    }

    /// Opens the transport.
    /// - Parameter callerPolls: RDMA only: no completion thread; the caller calls `progress()`.
    func open(callerPolls: Bool = false) throws -> any RemoteMemoryTransport {
        let policy = intraHost.flatMap(IntraHostPolicy.init(rawValue:)) ?? .automatic
        let options = RemoteTransportOptions(sendQueueDepth: sqDepth, completionThread: !callerPolls, intraHost: policy)
        switch resolvedKind {
        case .tcp:
            // Options that only RDMA reads are refused rather than silently ignored.
            let rdmaOnly = [device.map { "--device \($0)" }, cm.map { "--cm \($0)" }].compactMap { $0 }
            guard rdmaOnly.isEmpty else {
                throw ValidationError("\(rdmaOnly.joined(separator: " and ")) apply to RDMA only, but this run uses the TCP emulation"
                    + (transport == nil ? " (no RDMA device on this host)" : " (--transport tcp)") + "; drop them or use --transport rdma")
            }
            return try TCPEmulationTransport(options: options)
        case .rdma:
            if let intraHost {
                throw ValidationError("--intra-host \(intraHost) applies to the TCP emulation only, but this run uses RDMA; drop it or use --transport tcp")
            }
            guard let manager = RDMAConnectionManager(rawValue: cm ?? "rdmacm") else {
                throw ValidationError("invalid --cm '\(cm ?? "")': expected rdmacm or socket")
            }
            let devices = RDMATransport.availableDevices()
            guard let name = device ?? devices.first else {
                throw MemWallError(.notFound, "no RDMA device on this host; use --transport tcp for the emulation, or load rdma_rxe")
            }
            return try RDMATransport(device: name, options: options, connectionManager: manager)
        }
    }
}

/// One `--export NAME:SIZE[:ACCESS]` argument.
struct ExportSpec {
    var name: String
    var bytes: Int
    var access: RemoteAccess

    init(parsing text: String) throws {
        let parts = text.split(separator: ":", omittingEmptySubsequences: false).map(String.init)
        guard parts.count == 2 || parts.count == 3, !parts[0].isEmpty else {
            throw ValidationError("invalid --export '\(text)': expected NAME:SIZE[:ACCESS] such as kv/slot-0:64M:rw")
        }
        name = parts[0]
        do {
            bytes = try ByteCount.parse(parts[1]).rawValue
        } catch {
            throw ValidationError("invalid size in --export '\(text)': expected a size such as 4k, 64M or 1G")
        }
        guard bytes > 0 else { throw ValidationError("invalid size in --export '\(text)': expected a positive size") }
        let a = parts.count == 3 ? parts[2] : "rw"
        var access: RemoteAccess = []
        for c in a {
            switch c {
            case "r": access.insert(.read)
            case "w": access.insert(.write)
            default: throw ValidationError("invalid access '\(a)' in --export '\(text)': expected r, w or rw")
            }
        }
        guard !access.isEmpty else { throw ValidationError("invalid access '\(a)' in --export '\(text)': expected r, w or rw") }
        self.access = access
    }
}

/// The byte pattern `rdma-serve --fill SEED` writes, so a peer in another process can check READs.
enum ServePattern {
    static func byte(_ i: Int, seed: Int) -> UInt8 {
        UInt8(truncatingIfNeeded: (i &* 131) &+ (seed &* 29) &+ (i >> 9) &+ 1)
    }
}

/// `memwall rdma-serve`: exports regions by name and serves one-sided READ/WRITE
/// until standard input closes. Used as the far process by two-process tests
/// and by `memwall bench rdma --connect`.
struct RDMAServeCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "rdma-serve",
        abstract: "Export memory regions by name and serve remote READ/WRITE (RDMA or its TCP emulation).",
        discussion: "Prints 'listening PORT TRANSPORT' on stdout once ready, then 'notification PEER VALUE' per notification; exits when stdin closes.",
        shouldDisplay: false)

    @OptionGroup var selection: RemoteTransportSelection

    @Option(name: .long, help: "Address to listen on (default: the RDMA device's first IPv4 address; 127.0.0.1 for tcp).")
    var address: String?

    @Option(name: .long, help: "Port (0: any free port; the chosen one is printed).")
    var port: UInt16 = 0

    @Option(name: .long, help: "A region to export, NAME:SIZE[:ACCESS] (ACCESS r, w or rw; default rw). Repeatable.")
    var export: [String] = []

    @Option(name: .long, help: "Fill exported regions with the pattern for this seed (for READ checks by a peer).")
    var fill: Int?

    @Flag(name: .long, help: "Private memory only: allocate exported regions 2 MiB-aligned with MADV_HUGEPAGE.")
    var hugePages = false

    @Option(name: .long, help: "Memory behind exported regions: shared (a sealed memfd, which intra-host peers map and copy with memcpy; the default with --transport tcp) or private (anonymous memory, which they reach with process_vm_readv/writev; the default with rdma).")
    var memory: String?

    func validate() throws {
        if let memory, !["shared", "private"].contains(memory) {
            throw ValidationError("invalid --memory '\(memory)': expected shared or private")
        }
        if hugePages && memory != "private" {
            throw ValidationError("--huge-pages applies to --memory private (shared memory follows the kernel's shmem_enabled setting)")
        }
    }

    func run() async throws {
        let specs = try export.map(ExportSpec.init(parsing:))
        guard !specs.isEmpty else { throw ValidationError("give at least one --export NAME:SIZE[:ACCESS]") }
        let t = try selection.open()
        var regions: [MemoryRegion] = []
        for s in specs {
            let shared = (memory ?? (t is TCPEmulationTransport ? "shared" : "private")) == "shared"
            let r = shared ? try MemoryRegion.allocateShared(byteCount: s.bytes)
                : try MemoryRegion.allocate(byteCount: s.bytes, transparentHugePages: hugePages)
            if let seed = fill {
                r.withUnsafeMutableBytes { b in for i in 0 ..< b.count { b[i] = ServePattern.byte(i, seed: seed) } }
            }
            try t.register(r)
            try t.export(r, offset: 0, length: s.bytes, as: s.name, access: s.access)
            regions.append(r)
        }
        let listenAddress = address ?? RemoteTransportSelection.defaultAddress(for: t)
        let bound = try t.listen(address: listenAddress, port: port)
        let intraHostLabel = (t as? TCPEmulationTransport).map { "; intra-host path: \($0.intraHostListening)" } ?? ""
        print("listening \(bound) \(t.name) (\(t.capabilities.implementation)) on \(listenAddress)\(intraHostLabel)")
        fflush(nil)
        // Notifications are printed as they come; stdin closing ends the server.
        let notifier = Task {
            while !Task.isCancelled {
                if let n = try? await t.nextNotification(timeout: .seconds(1)) {
                    print("notification \(n.peer) \(n.value)")
                    fflush(nil)
                }
            }
        }
        await Task.detached {
            var buf = [UInt8](repeating: 0, count: 256)
            while read(0, &buf, buf.count) > 0 {}
        }.value
        notifier.cancel()
        withExtendedLifetime(regions) {}
        (t as? TCPEmulationTransport)?.close()
        (t as? RDMATransport)?.close()
    }
}
