import Foundation
import KVPlacement
import Synchronization
import Testing

/// libmemwall as C programs see it: the built library staged under its installed name,
/// include/memwall.h, and a C compiler. Each test that needs `cc` or the library skips
/// (cancels, with the reason printed) when it is missing.
@Suite struct CProgramTests {
    @Test("the C program (Tests/c/abi_test.c) passes every check against the built library")
    func cProgramPasses() throws {
        try expectPasses("abi_test")
    }

    @Test("the KV program (Tests/c/kv_test.c) stores, demotes to NVMe, loads back and is refused cleanly")
    func kvProgramPasses() throws {
        try expectPasses("kv_test")
    }

    @Test("the pool program (Tests/c/pool_test.c) shares blocks between two attachments, reads in place and is refused cleanly")
    func poolProgramPasses() throws {
        try expectPasses("pool_test")
    }

    /// Tests/c/NAME.c exited 0 after a clean "N passed, 0 failed" and no "not ok" line.
    private func expectPasses(_ name: String) throws {
        let outcome = try CBuild.programOutcome(name)
        #expect(outcome.status == 0, "\(name) failed:\n\(outcome.output)")
        let summary = outcome.output.split(separator: "\n").last { $0.hasSuffix(" failed") }
        #expect(summary?.hasSuffix("passed, 0 failed") == true, "no clean summary line:\n\(outcome.output)")
        #expect(!outcome.output.contains("not ok"), "\(outcome.output)")
    }

    @Test("mw_chain_keys gives the keys BlockKey.chained gives in Swift")
    func chainedKeysMatchSwift() throws {
        let outcome = try CBuild.programOutcome("abi_test")
        let line = try #require(outcome.output.split(separator: "\n").first { $0.hasPrefix("chain 42: ") },
                                "abi_test printed no keys:\n\(outcome.output)")
        let cKeys = line.dropFirst("chain 42: ".count).split(separator: " ").compactMap { UInt64($0, radix: 16) }
        let tokens = (UInt32(1000)..<1040).map { $0 }
        var swiftKeys: [UInt64] = []
        var parent: BlockKey?
        for start in stride(from: 0, to: tokens.count, by: 16) {
            let key = BlockKey.chained(parent: parent, tokens: tokens[start..<min(start + 16, tokens.count)], extraKey: 42)
            swiftKeys.append(key.rawValue)
            parent = key
        }
        #expect(cKeys == swiftKeys)
    }

    @Test("include/memwall.h compiles as C11 and as C++ with every warning an error")
    func headerCompilesInCAndCPlusPlus() throws {
        let dir = try CBuild.scratch()
        let source = dir.appendingPathComponent("header_only.c")
        try "#include \"memwall.h\"\nint main(void) { return mw_abi_version() == MW_ABI_VERSION ? 0 : 1; }\n"
            .write(to: source, atomically: true, encoding: .utf8)
        let include = CBuild.root.appendingPathComponent("include").path
        let c = try CBuild.run(try CBuild.tool("cc"), ["-std=c11", "-Wall", "-Wextra", "-Wpedantic", "-Werror",
                                                     "-fsyntax-only", "-I", include, source.path])
        #expect(c.status == 0, "\(c.output)")
        let cxx = try CBuild.run(try CBuild.tool("c++"), ["-std=c++17", "-Wall", "-Wextra", "-Wpedantic", "-Werror",
                                                        "-fsyntax-only", "-x", "c++", "-I", include, source.path])
        #expect(cxx.status == 0, "\(cxx.output)")
    }

    @Test("ldd: libmemwall needs no Swift runtime library; it exports exactly the functions of memwall.h")
    func libraryCarriesItsRuntime() throws {
        let lib = try CBuild.stagedLibrary()
        let ldd = try CBuild.run(try CBuild.tool("ldd"), [lib.appendingPathComponent("libmemwall.so").path])
        #expect(ldd.status == 0, "\(ldd.output)")
        let needed = ldd.output.split(separator: "\n").map { String($0.split(separator: " ").first ?? "").trimmingCharacters(in: .whitespaces) }
        #expect(!needed.isEmpty)
        let swiftRuntime = needed.filter { name in
            ["swift", "Foundation", "dispatch", "BlocksRuntime", "icu"].contains { name.contains($0) }
        }
        #expect(swiftRuntime.isEmpty, "Swift runtime libraries needed at run time: \(swiftRuntime)")
        #expect(!ldd.output.contains("not found"), "\(ldd.output)")

        let nm = try CBuild.run(try CBuild.tool("nm"), ["-D", "--defined-only", lib.appendingPathComponent("libmemwall.so").path])
        // Global symbols: "ADDRESS T name@@MEMWALL_1"; gold keeps the Swift modules' symbols
        // in the table but local (lower-case type letter), where nothing can bind to them.
        let globals = nm.output.split(separator: "\n").compactMap { line -> String? in
            let parts = line.split(separator: " ")
            guard parts.count == 3, let type = parts[1].first, type.isUppercase, type != "A" else { return nil }
            return String(parts[2].split(separator: "@").first ?? "")
        }
        // Every function memwall.h declares, and nothing else (dispatch's TLS key aside).
        let header = try String(contentsOf: CBuild.root.appendingPathComponent("include/memwall.h"), encoding: .utf8)
        let declared = Set(header.split(separator: "\n").compactMap { line -> String? in
            guard !line.hasPrefix(" "), !line.hasPrefix("#"), !line.hasPrefix("/"), !line.hasPrefix("typedef"),
                  let open = line.firstIndex(of: "("), let start = line[..<open].range(of: "mw_", options: .backwards)
            else { return nil }
            return String(line[start.lowerBound..<open])
        })
        #expect(declared.count >= 30, "the header parse found only \(declared.sorted())")
        let exported = Set(globals.filter { $0 != "__dispatch_tsd" })
        #expect(exported.subtracting(declared).isEmpty, "exported but not in memwall.h: \(exported.subtracting(declared).sorted())")
        #expect(declared.subtracting(exported).isEmpty, "in memwall.h but not exported: \(declared.subtracting(exported).sorted())")
    }
}

/// Staging the library and building C programs against it, once per test run.
enum CBuild {
    static let root = URL(fileURLWithPath: #filePath)
        .deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()

    struct Outcome: Sendable {
        var status: Int32
        var output: String
    }

    /// A fresh directory under the system's temporary directory, removed at exit by the OS's
    /// tmp cleaning only; the tests write a few small files there.
    static func scratch() throws -> URL {
        let dir = FileManager.default.temporaryDirectory
            .appendingPathComponent("memwall-cabi-\(getpid())-\(UUID().uuidString.prefix(8))")
        try FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
        return dir
    }

    /// `name` on PATH, or a skip saying it is missing.
    static func tool(_ name: String) throws -> String {
        for dir in (ProcessInfo.processInfo.environment["PATH"] ?? "/usr/bin:/bin").split(separator: ":") {
            let path = "\(dir)/\(name)"
            if FileManager.default.isExecutableFile(atPath: path) { return path }
        }
        try Test.cancel("\(name) is not installed (scripts/install-deps build installs a C toolchain)")
    }

    /// The product `swift build` made (`libMemWallC.so`, beside the test bundle), copied as
    /// `libmemwall.so.1` (its SONAME) with a `libmemwall.so` link, as `make install` lays it out.
    static func stagedLibrary() throws -> URL {
        let result: Result<URL, any Error> = staged.withLock { cached in
            if let cached { return cached }
            let made = Result { () throws -> URL in
                let bundleDir = URL(fileURLWithPath: CommandLine.arguments[0]).deletingLastPathComponent()
                let candidates = [bundleDir, root.appendingPathComponent(".build/debug")]
                    .map { $0.appendingPathComponent("libMemWallC.so") }
                guard let built = candidates.first(where: { FileManager.default.fileExists(atPath: $0.path) }) else {
                    throw CBuildError.notBuilt
                }
                let dir = try scratch().appendingPathComponent("lib")
                try FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
                try FileManager.default.copyItem(at: built, to: dir.appendingPathComponent("libmemwall.so.1"))
                try FileManager.default.createSymbolicLink(atPath: dir.appendingPathComponent("libmemwall.so").path,
                                                           withDestinationPath: "libmemwall.so.1")
                return dir
            }
            cached = made
            return made
        }
        do {
            return try result.get()
        } catch CBuildError.notBuilt {
            try Test.cancel("libMemWallC.so is not built (swift build --build-tests builds it)")
        }
    }
    private static let staged = Mutex<Result<URL, any Error>?>(nil)

    enum CBuildError: Error { case notBuilt }

    /// Tests/c/NAME.c compiled with every warning an error and run once (with a scratch
    /// directory on a real filesystem as its argument: O_DIRECT needs one); later callers get
    /// the same outcome.
    static func programOutcome(_ name: String) throws -> Outcome {
        let lib = try stagedLibrary()
        let cc = try tool("cc")
        return try programs.withLock { cache in
            if let cached = cache[name] { return cached }
            let dir = try scratch()
            let binary = dir.appendingPathComponent(name).path
            let build = try run(cc, ["-std=c11", "-D_DEFAULT_SOURCE", "-Wall", "-Wextra", "-Werror", "-pthread",
                                     "-I", root.appendingPathComponent("include").path,
                                     root.appendingPathComponent("Tests/c/\(name).c").path,
                                     "-L", lib.path, "-lmemwall", "-Wl,-rpath,\(lib.path)", "-o", binary])
            guard build.status == 0 else {
                let failed = Outcome(status: build.status, output: "cc failed:\n" + build.output)
                cache[name] = failed
                return failed
            }
            let storage = FileManager.default.fileExists(atPath: "/var/tmp") ? "/var/tmp" : dir.path
            let outcome = try run(binary, [storage])
            cache[name] = outcome
            return outcome
        }
    }
    private static let programs = Mutex<[String: Outcome]>([:])

    /// Runs `tool` with `arguments`; its status, and its standard output and error together
    /// (one pipe, so neither can fill up while the other is read).
    static func run(_ tool: String, _ arguments: [String]) throws -> Outcome {
        let process = Process()
        process.executableURL = URL(fileURLWithPath: tool)
        process.arguments = arguments
        let pipe = Pipe()
        process.standardOutput = pipe
        process.standardError = pipe
        process.standardInput = FileHandle.nullDevice
        try process.run()
        let output = pipe.fileHandleForReading.readDataToEndOfFile()
        process.waitUntilExit()
        return Outcome(status: process.terminationStatus, output: String(decoding: output, as: UTF8.self))
    }
}
