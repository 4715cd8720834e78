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

    /// The parsed options as a value the parser does not own.
    var options: TopoOptions {
        TopoOptions(xml: xml, fsroot: fsroot, synthetic: synthetic, json: json, svg: svg)
    }

    func validate() throws {
        if options.inputsGiven > 1 {
            throw ValidationError("--xml, --fsroot and --synthetic are alternatives: give at most one")
        }
    }

    func run() throws {
        try options.run()
    }
}

/// What `memwall topo` was asked to do, apart from the parser that read it, so that
/// ``MemWall/main()`` can also run it from ``init(plainArguments:)``.
struct TopoOptions: Equatable {
    var xml: String?
    var fsroot: String?
    var synthetic: String?
    var json: Bool
    var svg: String?

    init(xml: String? = nil, fsroot: String? = nil, synthetic: String? = nil, json: Bool = false,
         svg: String? = nil) {
        self.xml = xml
        self.fsroot = fsroot
        self.synthetic = synthetic
        self.json = json
        self.svg = svg
    }

    /// Whether `name` is one of the long options `topo` declares, and if so whether it takes
    /// a value (a switch rather than a dictionary: no hashing machinery to set up at start).
    private static func takesValue(_ name: String) -> Bool? {
        switch name {
        case "--xml", "--fsroot", "--synthetic", "--svg": true
        case "--json": false
        default: nil
        }
    }

    /// Reads `arguments` (without the program name) when they are `topo` followed only by
    /// its own options, each at most once, as `--name value` or `--json`, with at most one
    /// of `--xml`, `--fsroot`, `--synthetic`, and every value non-empty and not starting
    /// with `-`. For anything else (help, `--version`, `--name=value`, repeats, unknown or
    /// misplaced words) it returns nil and the caller parses with swift-argument-parser,
    /// so that help, errors and exit statuses stay the parser's own.
    ///
    /// Why: the parser's first parse costs about 2 ms of reflection and runtime metadata
    /// look-ups, a tenth of what `memwall topo` takes on a snapshot; these plain forms are
    /// what scripts and people type, and for them the result is the same (the test suite
    /// checks it against the parser).
    init?(plainArguments arguments: [String]) {
        guard arguments.first == TopoCommand.configuration.commandName else { return nil }
        var values: [String: String] = [:]
        var json = false
        var rest = arguments.dropFirst()
        while let name = rest.popFirst() {
            switch Self.takesValue(name) {
            case false?:
                if json { return nil }
                json = true
            case true?:
                guard values[name] == nil, let value = rest.popFirst(), !value.isEmpty, !value.hasPrefix("-") else {
                    return nil
                }
                values[name] = value
            case nil:
                return nil
            }
        }
        self.init(xml: values["--xml"], fsroot: values["--fsroot"], synthetic: values["--synthetic"],
                  json: json, svg: values["--svg"])
        if inputsGiven > 1 { return nil }
    }

    /// How many of the alternative inputs `--xml`, `--fsroot`, `--synthetic` were given.
    var inputsGiven: Int { [xml, fsroot, synthetic].count { $0 != nil } }

    /// Loads the topology and prints it (and draws the SVG picture when asked).
    func run() throws(MemWallError) {
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
        try Output.write(text)
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
