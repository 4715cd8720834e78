import Foundation
import MemWallCore
import Synchronization
@testable import Topology

/// Locates test inputs: the shared hwloc corpus (`../shared/data/hwloc-xml` from the
/// repository root) and the project's own fixtures, both found from this file's path.
enum TestData {
    static let repositoryRoot: URL = URL(fileURLWithPath: #filePath)
        .deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()

    static let fixtures = repositoryRoot.appendingPathComponent("Tests/TopologyTests/Fixtures")

    /// `../shared/data/hwloc-xml`, walking up from the repository root.
    static let corpus: URL? = {
        var dir = repositoryRoot
        for _ in 0..<4 {
            let candidate = dir.appendingPathComponent("shared/data/hwloc-xml")
            if FileManager.default.fileExists(atPath: candidate.path) { return candidate }
            dir = dir.deletingLastPathComponent()
        }
        return nil
    }()


    static var hasCorpus: Bool { corpus != nil }

    static func corpusFiles(_ subdirectory: String, suffix: String) -> [String] {
        guard let corpus else { return [] }
        let dir = corpus.appendingPathComponent(subdirectory)
        let names = (try? FileManager.default.contentsOfDirectory(atPath: dir.path)) ?? []
        return names.filter { $0.hasSuffix(suffix) }.sorted()
    }

    static func corpusPath(_ relative: String) -> String {
        (corpus ?? repositoryRoot).appendingPathComponent(relative).path
    }

    /// Number of NUMANode objects in an hwloc XML document (lstopo's own output).
    static func numaNodeCount(inXML path: String) throws -> Int {
        let text = try String(contentsOfFile: path, encoding: .utf8)
        return text.components(separatedBy: "<object type=\"NUMANode\"").count - 1
    }

    /// NUMA node count as `lstopo-no-graphics` reports it, `nil` if lstopo is not installed.
    static func lstopoNodeCount(arguments: [String], environment: [String: String] = [:]) throws -> Int? {
        guard let lstopo = ["/usr/bin/lstopo-no-graphics", "/usr/local/bin/lstopo-no-graphics"]
            .first(where: { FileManager.default.isExecutableFile(atPath: $0) }) else { return nil }
        let output = try run(lstopo, arguments + ["--only", "numanode"], environment: environment)
        return output.split(separator: "\n").filter { $0.contains("NUMANode") }.count
    }

    @discardableResult
    static func run(_ tool: String, _ arguments: [String], environment: [String: String] = [:]) throws -> String {
        let process = Process()
        process.executableURL = URL(fileURLWithPath: tool)
        process.arguments = arguments
        var env = ProcessInfo.processInfo.environment
        for (k, v) in environment { env[k] = v }
        process.environment = env
        let pipe = Pipe()
        process.standardOutput = pipe
        process.standardError = FileHandle.nullDevice
        try process.run()
        let data = pipe.fileHandleForReading.readDataToEndOfFile()
        process.waitUntilExit()
        return String(decoding: data, as: UTF8.self)
    }

    private static let extracted = Mutex<[String: String]>([:])

    /// Extracts a `*.tar.bz2` sysfs snapshot once per test run and returns the directory
    /// to use as fsroot (the archive's single top-level directory).
    static func extractSnapshot(_ tarball: String) throws -> String {
        try extracted.withLock { cache in
            if let dir = cache[tarball] { return dir }
            let base = FileManager.default.temporaryDirectory
                .appendingPathComponent("memwall-topology-tests-\(getpid())")
                .appendingPathComponent(URL(fileURLWithPath: tarball).lastPathComponent)
            try FileManager.default.createDirectory(at: base, withIntermediateDirectories: true)
            try run("/usr/bin/tar", ["xjf", tarball, "-C", base.path])
            let entries = try FileManager.default.contentsOfDirectory(atPath: base.path)
            guard entries.count == 1 else {
                throw MemWallError(.malformedInput, "\(tarball) should hold one top-level directory, has \(entries)")
            }
            let dir = base.appendingPathComponent(entries[0]).path
            cache[tarball] = dir
            return dir
        }
    }
}
