import ArgumentParser
#if canImport(Glibc)
import Glibc
#endif
import FoundationEssentials
import MemWallCore
import NUMATransport
import RDMATransport
import Transport
import URingTransport

/// `memwall capabilities`: what this host offers each MemWall path, found by
/// really calling libnuma, liburing, libibverbs/librdmacm and hwloc, and whether
/// MemWall will use the hardware path or its software emulation.
struct CapabilitiesCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "capabilities",
        abstract: "Probe NUMA/CXL, io_uring, O_DIRECT, RDMA and hwloc on this host.",
        discussion: "Every figure comes from calling the library; --json gives the same as stable JSON (schema memwall.capabilities/1).")

    @Option(name: .long, help: "Directory in which to test O_DIRECT (default: the current directory).")
    var dir: String = "."

    @Flag(name: .long, help: "Print the report as JSON.")
    var json = false

    func run() async throws {
        // A directory that cannot hold a file is bad input, not an O_DIRECT
        // finding: create (and at once remove) a private scratch file first, so
        // the error names the real cause (ENOENT, EACCES, EROFS).
        do throws(MemWallError) {
            _ = try StorageTarget.scratch(in: dir, prefix: ".memwall-capabilities", byteCount: 0)
        } catch {
            var e = error
            e.message = "--dir: cannot create a file in '\(dir)': " + e.message
            throw e
        }
        let report = try CapabilitiesReport.probe(directory: dir)
        if json {
            try Output.printJSON(report)
        } else {
            print(report.text)
        }
    }
}

/// The probe's findings, in the shape `--json` prints.
struct CapabilitiesReport: Codable {
    /// How a path will be served.
    struct Decision: Codable {
        /// "hardware" or "emulation".
        var mode: String
        /// What will be used, and why.
        var detail: String
    }

    /// Schema identifier; bumped only on incompatible changes.
    var schema = "memwall.capabilities/1"
    var kernel: String
    var numa: NUMAProbe
    var ioURing: URingProbe
    var directIO: DirectIOProbe
    var rdma: RDMAProbe
    var hwloc: HwlocProbe
    /// What MemWall will use for each kind of data movement.
    var decisions: [String: Decision]

    static func probe(directory: String) throws -> CapabilitiesReport {
        let numa = NUMAProbe.probe()
        let uring = URingProbe.probe()
        let dio = try DirectIOProbe.probe(directory: directory)
        let rdma = RDMAProbe.probe()
        let hwloc = HwlocProbe.probe()
        var uts = utsname()
        uname(&uts)
        let kernel = withUnsafeBytes(of: &uts.release) { String(decoding: $0.prefix(while: { $0 != 0 }), as: UTF8.self) }

        var d: [String: Decision] = [:]
        if numa.available && numa.nodes.count > 1 && numa.pageMigrationUsable {
            let far = numa.cpulessNodes
            d["memory"] = Decision(mode: "hardware", detail: far.isEmpty
                ? "libnuma across \(numa.nodes.count) nodes (no CPU-less node: no CXL-style far memory)"
                : "libnuma; far memory on CPU-less node(s) \(far.map(String.init).joined(separator: ","))")
        } else {
            let why = !numa.available ? "NUMA unavailable"
                : numa.nodes.count <= 1 ? "one NUMA node" : "page migration refused (\(numa.pageMigrationError ?? "?"))"
            d["memory"] = Decision(mode: "emulation", detail: "far-memory pool emulated in DRAM (\(why))")
        }
        if uring.setupWorks && uring.missingOpcodes.filter({ ["READ", "WRITE"].contains($0) }).isEmpty {
            let fixed = uring.registeredBuffersWork ? "registered buffers" : "unregistered buffers (\(uring.registeredBuffersError ?? ""))"
            d["storage"] = Decision(mode: "hardware",
                detail: "io_uring with \(fixed), " + (dio.works ? "O_DIRECT in \(dio.directory)" : "page cache in \(dio.directory) (O_DIRECT refused)"))
        } else {
            d["storage"] = Decision(mode: "emulation",
                detail: "pread/pwrite thread pool (\(uring.setupError ?? "io_uring lacks READ/WRITE"))")
        }
        if rdma.hasActivePort && rdma.connectionManagerWorks {
            let names = rdma.devices.filter { $0.ports.contains(where: \.isActive) }.map(\.name)
            d["remote"] = Decision(mode: "hardware", detail: "RDMA verbs on \(names.joined(separator: ", "))")
        } else {
            let why = rdma.devices.isEmpty ? "no RDMA device" : "no active RDMA port"
            d["remote"] = Decision(mode: "emulation", detail: "TCP with RDMA semantics (\(why))")
        }
        d["topology"] = hwloc.hasFirmwareFigures
            ? Decision(mode: "hardware", detail: "hwloc \(hwloc.version) with firmware (HMAT) latency/bandwidth")
            : Decision(mode: "hardware", detail: "hwloc \(hwloc.version); no firmware latency/bandwidth (HMAT absent): figures stay missing")
        return CapabilitiesReport(kernel: kernel, numa: numa, ioURing: uring, directIO: dio, rdma: rdma, hwloc: hwloc, decisions: d)
    }

    var text: String {
        var out: [String] = ["MemWall capabilities (kernel \(kernel))", ""]
        func row(_ name: String, _ status: String, _ detail: String) {
            out.append(name.padded(to: 10)
                       + status.padded(to: 11) + detail)
        }
        if numa.available {
            let nodes = numa.nodes.map { n in
                "node \(n.id): \(ByteCount(Int(n.memoryBytes)))" + (n.isCPUless ? " CPU-less" : ", \(n.cpuCount) CPUs")
                    + (n.firmwareFigures.map { f in
                        " (HMAT \(f.readLatencyNanoseconds.map { "\($0) ns" } ?? "? ns") / \(f.readBandwidthMiBps.map { ByteCount($0 << 20).description + "/s" } ?? "?"))"
                    } ?? "")
            }.joined(separator: "; ")
            row("NUMA", "available", "\(numa.nodes.count) node(s), \(numa.cpulessNodes.count) CPU-less — \(nodes)")
            row("", "", "page migration (move_pages): " + (numa.pageMigrationUsable ? "usable" : "refused: \(numa.pageMigrationError ?? "")"))
        } else {
            row("NUMA", "absent", numa.reason ?? "")
        }
        if ioURing.setupWorks {
            row("io_uring", "usable", "opcodes: \(ioURing.supportedOpcodes.joined(separator: " "))"
                + (ioURing.missingOpcodes.isEmpty ? "" : "; missing: \(ioURing.missingOpcodes.joined(separator: " "))"))
            let limit = ioURing.memlockLimitBytes.map { ByteCount(Int($0)).description } ?? "unlimited"
            row("", "", "registered buffers: " + (ioURing.registeredBuffersWork ? "allowed" : "refused — \(ioURing.registeredBuffersError ?? "")")
                + " (memlock limit \(limit))")
        } else {
            row("io_uring", "refused", ioURing.setupError ?? "")
        }
        row("O_DIRECT", directIO.works ? "works" : "refused",
            "in \(directIO.directory) (\(directIO.filesystem))" + (directIO.reason.map { ": \($0)" } ?? ""))
        if rdma.devices.isEmpty {
            row("RDMA", "none", "0 devices" + (rdma.connectionManagerError.map { "; \($0)" } ?? ""))
        } else {
            for dev in rdma.devices {
                let ports = dev.ports.map { "port \($0.number) \($0.state) (\($0.linkLayer))" }.joined(separator: ", ")
                row("RDMA", dev.name, dev.error ?? ports)
            }
            if let e = rdma.connectionManagerError { row("", "", e) }
        }
        row("hwloc", hwloc.version, hwloc.loads
            ? "\(hwloc.numaNodes) NUMA node(s); firmware figures: "
              + (hwloc.hasFirmwareFigures ? "latency on \(hwloc.nodesWithLatency), bandwidth on \(hwloc.nodesWithBandwidth) node(s)" : "none (no HMAT)")
            : "cannot load topology: \(hwloc.error ?? "")")
        out.append("")
        out.append("MemWall will use:")
        for key in ["memory", "storage", "remote", "topology"] {
            guard let dec = decisions[key] else { continue }
            out.append("  " + key.padded(to: 10)
                       + (dec.mode == "emulation" ? "EMULATION  " : "hardware   ") + dec.detail)
        }
        return out.joined(separator: "\n")
    }
}
