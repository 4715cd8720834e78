#if canImport(Glibc)
import Glibc
#endif
import FoundationEssentials
import MemWallCore
import NUMATransport
import RDMATransport
import Transport
import URingTransport

/// The probe's findings, in the shape `--json` prints.
public struct CapabilitiesReport: Sendable, Codable {
    /// How a path will be served.
    public struct Decision: Sendable, Codable {
        /// "hardware" or "emulation".
        public var mode: String
        /// What will be used, and why.
        public var detail: String
    }

    /// Schema identifier; bumped only on incompatible changes.
    public var schema = "memwall.capabilities/1"
    public var kernel: String
    public var numa: NUMAProbe
    public var ioURing: URingProbe
    public var directIO: DirectIOProbe
    public var rdma: RDMAProbe
    public var hwloc: HwlocProbe
    /// What MemWall will use for each kind of data movement.
    public var decisions: [String: Decision]

    /// Probes every path by calling its library: libnuma, io_uring (a ring is set up and a
    /// buffer registered), O_DIRECT in `directory` (a pattern written, read back, compared),
    /// every RDMA port, hwloc's memory attributes.
    /// - Throws: ``MemWallError`` when no file can be created in `directory` (naming the
    ///   errno: ENOENT, EACCES, EROFS), or when the O_DIRECT probe itself fails.
    public static func probe(directory: String) throws -> CapabilitiesReport {
        // A directory that cannot hold a file is bad input, not an O_DIRECT
        // finding: create (and at once remove) a private scratch file first, so
        // the error names the real cause (ENOENT, EACCES, EROFS).
        do throws(MemWallError) {
            _ = try StorageTarget.scratch(in: directory, prefix: ".memwall-capabilities", byteCount: 0)
        } catch {
            var e = error
            e.message = "cannot create a file in '\(directory)': " + e.message
            throw e
        }
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
        // Between processes on this host: the kernel's cross-process copy where it is allowed.
        let intraHost = TCPEmulationTransport.intraHostCapability(.automatic)
        d["intra-host"] = intraHost.implementation.isHardware
            ? Decision(mode: "hardware", detail: intraHost.mechanism)
            : Decision(mode: "emulation", detail: "TCP between processes on this host (\(intraHost.implementation))")
        d["topology"] = hwloc.hasFirmwareFigures
            ? Decision(mode: "hardware", detail: "hwloc \(hwloc.version) with firmware (HMAT) latency/bandwidth")
            : Decision(mode: "hardware", detail: "hwloc \(hwloc.version); no firmware latency/bandwidth (HMAT absent): figures stay missing")
        return CapabilitiesReport(kernel: kernel, numa: numa, ioURing: uring, directIO: dio, rdma: rdma, hwloc: hwloc, decisions: d)
    }

    /// The report as stable JSON (see ``StableJSON``): what `memwall capabilities --json`
    /// prints and what the C ABI's `mw_capabilities_json` returns.
    public func jsonText() throws -> String { try StableJSON.text(self) }
}
