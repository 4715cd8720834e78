import ArgumentParser
import MemWallCore
import Topology
#if canImport(Glibc)
import Glibc
#endif

/// `memwall topo`: the machine's memory tiers, nodes, distances and device locality.
struct TopoCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "topo",
        abstract: "Show memory tiers, NUMA nodes with their HMAT figures, and device locality.",
        discussion: """
            Reads the live machine by default, or one of --xml, --fsroot, --synthetic. \
            Every classification says why; firmware figures that are missing or zero stay missing. \
            --json prints the stable schema of docs/topology-json.md (memwall.topology/1).
            """)

    @Option(name: .long, help: "Read an hwloc XML export (lstopo --of xml) instead of the live machine.")
    var xml: String?

    @Option(name: .long, help: "Read an extracted sysfs/procfs snapshot as if it were / (hwloc's HWLOC_FSROOT).")
    var fsroot: String?

    @Option(name: .long, help: "Build an hwloc synthetic topology, e.g. \"pack:2 numa:2 core:4 pu:1\".")
    var synthetic: String?

    @Flag(name: .long, help: "Print JSON (schema memwall.topology/1) instead of the terminal view.")
    var json = false

    @Option(name: .long, help: "Also draw nodes, tiers and devices as an SVG picture into FILE.")
    var svg: String?

    func validate() throws {
        let given = [xml, fsroot, synthetic].compactMap { $0 }
        if given.count > 1 {
            throw ValidationError("--xml, --fsroot and --synthetic are alternatives: give at most one")
        }
    }

    func run() throws {
        let source: TopologySource =
            if let xml { .xml(path: xml) }
            else if let fsroot { .fsroot(path: fsroot) }
            else if let synthetic { .synthetic(synthetic) }
            else { .live }
        let topology = try Topology.load(source)
        if let svg {
            try writeFile(svg, topology.svgText())
            StandardError.write("wrote \(svg)\n")
        }
        let text = json ? topology.json().serialized() + "\n" : topology.terminalText()
        writeStandardOutput(text)
    }

    private func writeFile(_ path: String, _ text: String) throws(MemWallError) {
        let fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0o644)
        guard fd >= 0 else {
            throw MemWallError(.systemCall, "cannot create SVG file '\(path)'", function: "open", errno: .current)
        }
        defer { close(fd) }
        var copy = text
        let ok = copy.withUTF8 { writeAll(fd, $0) }
        if !ok { throw MemWallError(.systemCall, "cannot write SVG file '\(path)'", function: "write", errno: .current) }
    }

    private func writeStandardOutput(_ text: String) {
        var copy = text
        _ = copy.withUTF8 { writeAll(1, $0) }
    }
}

/// Writes the whole buffer, resuming after short writes and EINTR.
private func writeAll(_ fd: Int32, _ buffer: UnsafeBufferPointer<UInt8>) -> Bool {
    guard let base = buffer.baseAddress else { return true }
    var offset = 0
    while offset < buffer.count {
        let n = write(fd, base + offset, buffer.count - offset)
        if n < 0 && errno == EINTR { continue }
        if n <= 0 { return false }
        offset += n
    }
    return true
}
