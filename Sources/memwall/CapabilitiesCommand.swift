import ArgumentParser
#if canImport(Glibc)
import Glibc
#endif
import FoundationEssentials
import HostCapabilities
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
        let report: CapabilitiesReport
        do {
            report = try CapabilitiesReport.probe(directory: dir)
        } catch var e as MemWallError {
            e.message = "--dir: " + e.message
            throw e
        }
        if json {
            try Output.printJSON(report)
        } else {
            print(report.text)
        }
    }
}

extension CapabilitiesReport {
    /// The terminal view of the report.
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
        for key in ["memory", "storage", "remote", "intra-host", "topology"] {
            guard let dec = decisions[key] else { continue }
            out.append("  " + key.padded(to: 11)
                       + (dec.mode == "emulation" ? "EMULATION  " : "hardware   ") + dec.detail)
        }
        return out.joined(separator: "\n")
    }
}
