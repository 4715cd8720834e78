import FoundationEssentials
import MemWallCore

/// fio run beside a MemWall benchmark on the same file, block size, queue
/// depth and direction, with O_DIRECT and the io_uring engine (fio's
/// defaults otherwise: no fixed buffers or files, batches of 1).
struct FioReference {
    /// The executable (`fio`, looked up in `PATH`, or a path).
    var executable: String
    /// Longest a single fio run may take before it is stopped.
    var seconds = 600

    /// What one fio run measured.
    struct Measurement {
        /// Bytes per second of the job's direction, as fio reports `bw_bytes`.
        var bytesPerSecond: Double
        /// The job's run time (fio reports whole milliseconds).
        var runtimeMilliseconds: Int
        /// I/Os completed.
        var ios: Int
        /// The command line, for reports.
        var command: String
    }

    /// Why a reference figure is missing, said in the report instead of a number.
    struct Skipped: Error { var reason: String }

    /// `fio-3.33`, or nil when fio is not installed or does not answer.
    func version() -> String? {
        guard let r = try? ChildProcess.run(executable, ["--version"], seconds: 30), r.status == 0 else { return nil }
        let line = r.standardOutput.split(separator: "\n").first.map(String.init)?.trimmingWhitespace() ?? ""
        return line.isEmpty ? nil : String(line.prefix(64))
    }

    /// Moves `bytes` from offset 0 of `path` in `bs`-byte I/Os at `queueDepth`.
    /// - Parameter write: Write (offload) rather than read (onload).
    /// - Throws: ``Skipped`` when fio is missing or fails; its reason names what fio said.
    func sequential(path: String, write: Bool, blockBytes bs: Int, queueDepth: Int, bytes: Int) throws(Skipped) -> Measurement {
        try run(path: path, direction: write ? "write" : "read", [
            "--rw=\(write ? "write" : "read")", "--bs=\(bs)", "--iodepth=\(queueDepth)",
            "--size=\(bytes)", "--offset=0",
        ])
    }

    /// Reads the first `batch` `bs`-byte blocks of `path` (adjacent, as a
    /// batch's slots are) at `queueDepth`, `loops` times over; the time of one
    /// batch is the job's run time divided by `loops`. fio drains its queue at
    /// the end of every loop, so each loop is one batch from first submission
    /// to last completion, plus fio's own restart, which counts against fio.
    ///
    /// (fio's `thinktime_blocks` would cut one sequential pass into drained
    /// batches instead, but with `thinktime_blocks_type=issue` fio 3.33 hung
    /// here now and then, and the default type lets batches overlap.)
    func batches(path: String, blockBytes bs: Int, batch: Int, queueDepth: Int, loops: Int) throws(Skipped) -> Measurement {
        try run(path: path, direction: "read", [
            "--rw=read", "--bs=\(bs)", "--iodepth=\(queueDepth)",
            "--size=\(bs * batch)", "--offset=0", "--loops=\(loops)",
        ])
    }

    private func run(path: String, direction: String, _ workload: [String]) throws(Skipped) -> Measurement {
        let arguments = ["--name=memwall-bench-kv", "--filename=\(path)"] + workload + [
            "--direct=1", "--ioengine=io_uring", "--allow_file_create=0",
            "--runtime=\(seconds)", "--output-format=json",
        ]
        let command = ([executable] + arguments).joined(separator: " ")
        let outcome: ChildProcess.Outcome?
        do {
            outcome = try ChildProcess.run(executable, arguments, seconds: seconds + 60)
        } catch {
            throw Skipped(reason: "\(executable) could not be run: \(error.message)")
        }
        guard let outcome else {
            throw Skipped(reason: "\(executable) is not installed (scripts/install-deps installs fio; or give --fio PATH)")
        }
        guard outcome.status == 0 else {
            let said = outcome.standardError.split(separator: "\n").first.map { String($0.prefix(300)) } ?? ""
            throw Skipped(reason: "\(executable) failed (exit status \(outcome.status))\(said.isEmpty ? "" : ": " + said)")
        }
        guard !outcome.truncated else { throw Skipped(reason: "\(executable) printed more than \(ByteCount(ChildProcess.outputLimit)); its report was not read") }
        return try Self.parse(outcome.standardOutput, direction: direction, command: command)
    }

    /// Reads fio's `--output-format=json` report: the first job's figures in `direction`.
    /// Anything fio printed before the JSON object (warnings) is skipped.
    static func parse(_ text: String, direction: String, command: String) throws(Skipped) -> Measurement {
        struct Report: Decodable {
            struct Side: Decodable {
                var bw_bytes: Double
                var total_ios: Int
            }
            struct Job: Decodable {
                var error: Int?
                var job_runtime: Int
                var read: Side
                var write: Side
            }
            var jobs: [Job]
        }
        guard let start = text.firstIndex(of: "{") else { throw Skipped(reason: "fio printed no JSON report") }
        let report: Report
        do {
            report = try JSONDecoder().decode(Report.self, from: Data(text[start...].utf8))
        } catch {
            throw Skipped(reason: "fio's JSON report could not be read: \(error)")
        }
        guard let job = report.jobs.first else { throw Skipped(reason: "fio's JSON report has no job") }
        if let e = job.error, e != 0 { throw Skipped(reason: "fio's job ended with error \(e) (\(Errno(rawValue: Int32(truncatingIfNeeded: e))))") }
        let side = direction == "write" ? job.write : job.read
        guard side.total_ios > 0, side.bw_bytes.isFinite, side.bw_bytes > 0, job.job_runtime >= 0 else {
            throw Skipped(reason: "fio's job moved nothing (\(side.total_ios) I/Os)")
        }
        return Measurement(bytesPerSecond: side.bw_bytes, runtimeMilliseconds: job.job_runtime, ios: side.total_ios, command: command)
    }
}
