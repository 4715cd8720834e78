import Foundation
import Testing

/// The file rules as a user meets them, with the built `memwall` binary as a
/// child process: nothing existing is written without --allow-write, scratch
/// files are private and gone after SIGINT/SIGTERM/SIGHUP, a backing file in
/// use by another run is refused naming that run's pid.
@Suite struct FileSafetyTests {
    static let trace = packageRoot.appendingPathComponent("traces/conversation-head-2000.jsonl").path

    static func binary() throws -> String {
        guard let b = memwallBinary else {
            try Test.cancel("the memwall executable is not built (swift build --build-tests builds it)")
        }
        return b
    }

    /// A fresh directory on the same disk as /var/tmp (O_DIRECT works there; tmpfs may refuse it).
    static func directory(_ name: String) throws -> String {
        let base = ProcessInfo.processInfo.environment["MEMWALL_TEST_DIR"] ?? "/var/tmp"
        let dir = "\(base)/memwall-files-\(getpid())-\(name)"
        try? FileManager.default.removeItem(atPath: dir)
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: false)
        return dir
    }

    static func entries(_ dir: String) -> [String] {
        ((try? FileManager.default.contentsOfDirectory(atPath: dir)) ?? []).sorted()
    }

    /// Starts memwall without waiting for it; its output goes to files in `dir`.
    static func start(_ arguments: [String], logsIn dir: String) throws -> Process {
        let p = Process()
        p.executableURL = URL(fileURLWithPath: try binary())
        p.arguments = arguments
        p.standardInput = FileHandle.nullDevice
        p.standardOutput = FileHandle.nullDevice
        _ = FileManager.default.createFile(atPath: dir + ".stderr", contents: nil)
        p.standardError = FileHandle(forWritingAtPath: dir + ".stderr")
        try p.run()
        return p
    }

    /// Waits (without a deadline: the child's own --seconds bounds it) until a
    /// file whose name starts with `prefix` exists in `dir`, or the child ended.
    static func waitForFile(prefix: String, in dir: String, while p: Process) -> String? {
        while p.isRunning {
            if let name = entries(dir).first(where: { $0.hasPrefix(prefix) }) { return dir + "/" + name }
            usleep(10_000)
        }
        return nil
    }

    static func contents(_ path: String) -> Data? { FileManager.default.contents(atPath: path) }

    /// Writes a file standing for one the user cares about; returns its bytes.
    static func userFile(_ path: String, _ text: String) throws -> Data {
        let data = Data(text.utf8)
        try #require(FileManager.default.createFile(atPath: path, contents: data))
        return data
    }

    /// A procfs file (its size reads as 0, so it is read until end of file).
    static func procText(_ path: String) -> String {
        let fd = open(path, O_RDONLY)
        guard fd >= 0 else { return "" }
        defer { close(fd) }
        var buffer = [UInt8](repeating: 0, count: 4096)
        let n = read(fd, &buffer, buffer.count)
        return n > 0 ? String(decoding: buffer[0 ..< n], as: UTF8.self) : ""
    }

    // MARK: Nothing existing is written without consent

    @Test func kvReplayRefusesAnExistingNVMePathWithoutAllowWrite() throws {
        let dir = try Self.directory("existing")
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let victim = dir + "/precious.bin"
        let original = try Self.userFile(victim, "precious contents, not a KV cache\n")
        let r = try run(try Self.binary(), ["kv", "replay", Self.trace, "--limit", "50", "--tiers", "dram:20,nvme:200",
                                            "--real-bytes", "--nvme-path", victim, "--quiet"])
        #expect(r.status != 0, "an existing --nvme-path was used without --allow-write")
        #expect(r.stderr.contains("--allow-write"), "\(r.stderr)")
        #expect(Self.contents(victim) == original, "the existing file was written")
    }

    @Test func kvReplayNeverUsesItsOwnTraceAsBackingFile() throws {
        let dir = try Self.directory("trace")
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let trace = dir + "/trace.jsonl"
        try FileManager.default.copyItem(atPath: Self.trace, toPath: trace)
        let original = Self.contents(trace)
        for extra in [[], ["--allow-write"]] {
            let r = try run(try Self.binary(), ["kv", "replay", trace, "--limit", "50", "--tiers", "dram:20,nvme:200",
                                                "--real-bytes", "--nvme-path", trace, "--quiet"] + extra)
            #expect(r.status != 0, "the trace was accepted as --nvme-path \(extra)")
            #expect(Self.contents(trace) == original, "the trace was written \(extra)")
        }
    }

    @Test func kvReplayRemovesTheFileItCreatedAndLeavesNoScratchBehind() throws {
        let dir = try Self.directory("created")
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let r = try run(try Self.binary(), ["kv", "replay", Self.trace, "--limit", "100", "--tiers", "dram:20,nvme:300,nvme:300",
                                            "--real-bytes", "--dir", dir, "--quiet"])
        #expect(r.status == 0, "\(r.stderr)")
        #expect(r.stdout.contains("read-backs verified"))
        #expect(Self.entries(dir).isEmpty, "left behind: \(Self.entries(dir))")
        // Two nvme tiers never share one file.
        let shared = dir + "/one.bin"
        let two = try run(try Self.binary(), ["kv", "replay", Self.trace, "--limit", "100", "--tiers", "dram:20,nvme:300,nvme:300",
                                              "--real-bytes", "--nvme-path", "\(shared),\(shared)", "--quiet"])
        #expect(two.status != 0, "two nvme tiers were given one file")
        #expect(Self.entries(dir).isEmpty, "left behind: \(Self.entries(dir))")
    }

    // MARK: Scratch files are private

    /// The child is started stopped (a shell stops itself, then execs memwall
    /// under the same pid), so the test knows its pid before it opens anything
    /// and can plant a link at the name an attacker would predict from it.
    @Test func benchStorageScratchIgnoresAPlantedSymlink() throws {
        let dir = try Self.directory("symlink")
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let target = dir + ".victim"
        let original = try Self.userFile(target, "a file the user owns\n")
        defer { unlink(target) }
        let p = Process()
        p.executableURL = URL(fileURLWithPath: "/bin/sh")
        p.arguments = ["-c", "kill -STOP $$; exec \"$0\" \"$@\"", try Self.binary(),
                       "bench", "storage", "--dir", dir, "--size", "8M", "--seconds", "0.2", "--qd", "1", "--quiet"]
        p.standardOutput = FileHandle.nullDevice
        p.standardError = FileHandle.nullDevice
        try p.run()
        let pid = p.processIdentifier
        while p.isRunning, !Self.procText("/proc/\(pid)/stat").contains(") T ") {
            usleep(1000)
        }
        #expect(symlink(target, "\(dir)/memwall-bench-storage-\(pid).bin") == 0, "could not plant the link: \(errno)")
        kill(pid, SIGCONT)
        p.waitUntilExit()
        #expect(Self.contents(target) == original, "the planted link's target was written")
        // Only the planted link is left: the run's own scratch file is gone.
        #expect(Self.entries(dir) == ["memwall-bench-storage-\(pid).bin"], "\(Self.entries(dir))")
    }

    // MARK: Scratch files go on signals

    static func signalIsDefault(_ sig: Int32) -> Bool {
        var old = sigaction()
        sigaction(sig, nil, &old)
        return old.__sigaction_handler.sa_handler == nil   // SIG_DFL is 0
    }

    /// Runs memwall until a file starting with `prefix` exists in a fresh
    /// directory, sends `sig`, and checks that the process died of it and the
    /// directory is empty.
    static func checkRemovedOnSignal(_ sig: Int32, _ name: String, prefix: String,
                                     _ arguments: (_ dir: String) -> [String]) throws {
        guard signalIsDefault(sig) else {
            try Test.cancel("signal \(sig) is ignored or handled in this test process, and so in its children: cannot test it")
        }
        let dir = try directory("\(name)-\(sig)")
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let p = try start(arguments(dir), logsIn: dir)
        defer { if p.isRunning { kill(p.processIdentifier, SIGKILL) }; unlink(dir + ".stderr") }
        try #require(waitForFile(prefix: prefix, in: dir, while: p) != nil, "memwall ended before creating its file")
        kill(p.processIdentifier, sig)
        p.waitUntilExit()
        #expect(p.terminationReason == .uncaughtSignal && p.terminationStatus == sig, "exit \(p.terminationStatus)")
        #expect(entries(dir).isEmpty, "left behind after signal \(sig): \(entries(dir))")
    }

    @Test(arguments: [SIGINT, SIGTERM, SIGHUP])
    func benchStorageScratchIsRemovedOnSignal(_ sig: Int32) throws {
        try Self.checkRemovedOnSignal(sig, "bench", prefix: "memwall-bench-storage") { dir in
            ["bench", "storage", "--dir", dir, "--size", "16M", "--seconds", "60", "--qd", "1", "--quiet"]
        }
    }

    @Test(arguments: [SIGINT, SIGTERM, SIGHUP])
    func benchKVScratchIsRemovedOnSignal(_ sig: Int32) throws {
        try Self.checkRemovedOnSignal(sig, "benchkv", prefix: "memwall-bench-kv") { dir in
            ["bench", "kv", "--dir", dir, "--block-bytes", "4k", "--bytes", "512M", "--quiet"]
        }
    }

    @Test(arguments: [SIGINT, SIGTERM, SIGHUP])
    func kvReplayBackingFileIsRemovedOnSignal(_ sig: Int32) throws {
        try Self.checkRemovedOnSignal(sig, "kv", prefix: "kv.bin") { dir in
            ["kv", "replay", Self.trace, "--tiers", "dram:20,nvme:2000", "--real-bytes", "--repeat", "1000",
             "--policy", "lru", "--nvme-path", dir + "/kv.bin", "--quiet"]
        }
    }

    // MARK: One run per backing file

    @Test func secondRunOnALockedBackingFileIsRefusedNamingTheHolder() throws {
        let dir = try Self.directory("lock")
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let shared = dir + "/kv.bin"
        let first = try Self.start(["kv", "replay", Self.trace, "--tiers", "dram:20,nvme:2000", "--real-bytes", "--repeat", "1000",
                                    "--policy", "lru", "--nvme-path", shared, "--quiet"], logsIn: dir)
        defer { if first.isRunning { kill(first.processIdentifier, SIGKILL) }; unlink(dir + ".stderr") }
        try #require(Self.waitForFile(prefix: "kv.bin", in: dir, while: first) != nil, "the first replay ended before creating its file")
        let second = try run(try Self.binary(), ["kv", "replay", Self.trace, "--limit", "50", "--tiers", "dram:20,nvme:2000",
                                                 "--real-bytes", "--nvme-path", shared, "--allow-write", "--quiet"])
        #expect(second.status != 0, "a second run used a backing file another run holds")
        #expect(second.stderr.contains("pid \(first.processIdentifier)"), "\(second.stderr)")
        let bench = try run(try Self.binary(), ["bench", "storage", "--file", shared, "--allow-write", "--patterns", "randwrite",
                                                "--size", "4M", "--seconds", "0.1", "--qd", "1", "--quiet"])
        #expect(bench.status != 0, "bench storage wrote a backing file another run holds")
        #expect(bench.stderr.contains("pid \(first.processIdentifier)"), "\(bench.stderr)")
        kill(first.processIdentifier, SIGTERM)
        first.waitUntilExit()
        #expect(Self.entries(dir).isEmpty, "left behind: \(Self.entries(dir))")
    }

    // MARK: Output that cannot be written is an error

    @Test(arguments: [
        ["kv", "route", trace, "--limit", "100", "--json", "--quiet"],
        ["topo", "--json"],
        ["capabilities", "--json", "--dir", "/var/tmp"],
    ])
    func outputToAFullDeviceFails(_ arguments: [String]) throws {
        let p = Process()
        p.executableURL = URL(fileURLWithPath: try Self.binary())
        p.arguments = arguments
        p.standardOutput = FileHandle(forWritingAtPath: "/dev/full")
        let err = Pipe()
        p.standardError = err
        try p.run()
        let e = String(decoding: err.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
        p.waitUntilExit()
        #expect(p.terminationStatus != 0, "output into /dev/full was lost and the exit status was 0")
        #expect(e.contains("standard output") && e.contains("ENOSPC"), "\(e)")
    }

    // MARK: Every number is checked, naming its option

    @Test(arguments: [
        (["bench", "memory", "--seconds", "-5"], "--seconds"),
        (["bench", "memory", "--seconds", "0"], "--seconds"),
        (["bench", "memory", "--chase-loads", "99999999999999"], "--chase-loads"),
        (["bench", "storage", "--size", "0"], "--size"),
        (["bench", "storage", "--random-bs", "1"], "--random-bs"),
        (["bench", "storage", "--batch", "-1"], "--batch"),
        (["bench", "storage", "--seconds", "-0.5"], "--seconds"),
        (["bench", "rdma", "--transport", "tcp", "--iterations", "-3"], "--iterations"),
        (["bench", "rdma", "--transport", "tcp", "--sq-depth", "0"], "--sq-depth"),
        (["bench", "rdma", "--transport", "tcp", "--device", "rxe0"], "--device"),
        (["kv", "route", trace, "--workers", "-2"], "--workers"),
        (["kv", "route", trace, "--workers", "4096", "--capacity", "1000000"], "--workers"),
        (["kv", "route", trace, "--load-weight", "inf", "--json"], "--load-weight"),
        (["kv", "route", trace, "--load-weight", "-1"], "--load-weight"),
        (["kv", "route", trace, "--move-cost", "nan"], "--move-cost"),
        (["kv", "replay", trace, "--repeat", "0"], "--repeat"),
        (["kv", "replay", trace, "--prefetch", "-1"], "--prefetch"),
        (["kv", "replay", trace, "--block-tokens", "-512"], "--block-tokens"),
        (["bench", "storage", "--dir", "/nonexistent-memwall-dir"], "directory '/nonexistent-memwall-dir' does not exist"),
        (["kv", "replay", trace, "--tiers", "dram:10,nvme:10", "--real-bytes", "--nvme-path", "/nonexistent-memwall-dir/kv.bin"],
         "directory '/nonexistent-memwall-dir' does not exist"),
        (["capabilities", "--dir", "/proc"], "--dir"),
    ])
    func badNumbersAndPathsNameTheirOption(_ arguments: [String], _ expected: String) throws {
        let r = try run(try Self.binary(), arguments)
        #expect(r.status != 0)
        #expect(r.stderr.contains(expected), "\(arguments): \(r.stderr)")
        #expect(!r.stderr.contains("Missing value"), "\(r.stderr)")
        #expect(r.stdout.isEmpty, "\(r.stdout)")
    }
}
