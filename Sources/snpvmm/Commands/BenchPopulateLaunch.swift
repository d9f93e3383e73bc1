import KVMFake
#if canImport(Glibc)
import Glibc
#endif
import GuestMemfd
import LaunchMeasurement
import Populate
import VMMCore

/// `snpvmm bench populate --platform plain|snp|tdx|cca`: one launch
/// of a `--size` image read from a file, through `LaunchSession` and the
/// Populate engine, on the emulated platform (`--emulate`, labelled so) or
/// this host's KVM. It reports the launch's rate, its phases, its calls and
/// units, and the process's peak RSS against the bound streaming keeps
/// (1.15 × the guest + 256 MiB, the emulated platform's own copy of guest
/// memory included); the baseline is memcpy of the same bytes into fresh
/// anonymous memory, timed in the same run after the peak RSS is taken.
enum BenchPopulateLaunch {
    struct Setup {
        var platform: Platform
        var policy: PopulationPolicy?
        var emulate: Bool
        var size: UInt64
    }

    static func run(_ setup: Setup, json: Bool) -> ExitCode {
        let path = "/tmp/snpvmm-bench-populate-\(getpid()).img"
        defer { unlink(path) }
        let result: PopulateResult
        let seconds: Double
        do {
            let (session, fake) = try makeSession(setup)
            try writeImage(path, size: setup.size)
            try session.createVCPUs(1)
            try session.createMemory(at: 0, size: setup.size, slot: 0)
            var options = PopulateOptions()
            options.policy = setup.policy
            options.observer = fake?.observer(of: session.vm)
            let progress = ProgressLine.make(totalBytes: setup.size)
            progress?.install(in: &options)
            defer { progress?.finish() }
            let plan = LaunchPlan(regions: [PlanRegion(name: "image", range: GuestRange(start: 0, size: setup.size),
                                                       contents: .file(path: path, offset: 0, length: setup.size))])
            let start = BenchPopulate.now()
            result = try session.populate(plan, options: options)
            seconds = BenchPopulate.now() - start
        } catch {
            unlink(path)
            let why = "\(error)"
            if setup.emulate { fail("bench populate: \(why)") }
            // The hint follows the kernel error's own sentence, without its full stop.
            fail("bench populate: \(why.hasSuffix(".") ? String(why.dropLast()) : why); give --emulate to run over the emulated platform")
        }
        let peakRSS = peakResidentBytes()
        let bound = setup.size + setup.size * 15 / 100 + (256 << 20)
        let baseline: Double
        do { baseline = try memcpyChunked(setup.size) } catch { fail("bench populate: the memcpy baseline: \(error)") }
        let gib = Double(setup.size) / Double(1 << 30)
        let report = result.report
        let label = setup.emulate ? "emulated \(setup.platform)" : "\(setup.platform) on this host's KVM"
        if json {
            let phases = PopulateReport.phases.compactMap { phase in
                report.phaseSeconds[phase].map { seconds in
                    "\"\(phase)\":{\"seconds\":\(seconds),\"gib_per_s\":\(report.gibPerSecond(phase).map { "\($0)" } ?? "null")}"
                }
            }.joined(separator: ",")
            var fields: [String] = []
            fields.append("\"platform\":\"\(setup.platform.rawValue)\",\"emulated\":\(setup.emulate),\"policy\":\"\(report.policy)\"")
            fields.append("\"size\":\(setup.size),\"seconds\":\(seconds),\"gib_per_s\":\(gib / seconds)")
            fields.append("\"memcpy_gib_per_s\":\(gib / baseline),\"ratio_vs_memcpy\":\(baseline / seconds)")
            fields.append("\"peak_rss_bytes\":\(peakRSS),\"peak_rss_bound_bytes\":\(bound),\"within_rss_bound\":\(peakRSS <= bound)")
            fields.append("\"ioctls\":\(report.ioctls),\"units_2m\":\(report.hugeUnits),\"pages_4k\":\(report.smallPages)")
            fields.append("\"bytes_copied\":\(report.bytesCopied),\"phases\":{\(phases)}")
            fields.append("\"measurement\":\"\(Hex.encode(result.expectedMeasurement ?? []))\"")
            print("{" + fields.joined(separator: ",") + "}")
        } else {
            print("populate \(setup.size) bytes, \(label), \(report.policy) (ratio = memcpy time / this time; above 1 is faster)")
            print("  memcpy into fresh anonymous memory  \(BenchPopulate.ms(baseline)) ms  \(BenchPopulate.rate(gib, baseline)) GiB/s  (baseline)")
            print("  launch (read, measure, fill, convert, populate, finish)"
                  + "  \(BenchPopulate.ms(seconds)) ms  \(BenchPopulate.rate(gib, seconds)) GiB/s  ratio \(BenchPopulate.ratio(baseline / seconds))")
            for phase in PopulateReport.phases {
                guard let phaseSeconds = report.phaseSeconds[phase] else { continue }
                let rate = report.gibPerSecond(phase).map { "  \(BenchPopulate.fixed3($0)) GiB/s" } ?? ""
                print("    \(phase.padding(10))\(BenchPopulate.ms(phaseSeconds)) ms\(rate)")
            }
            print("  ioctls \(report.ioctls), 2 MiB units \(report.hugeUnits), 4 KiB pages \(report.smallPages)")
            print("  peak RSS \(peakRSS >> 20) MiB, bound \(bound >> 20) MiB (1.15 x guest + 256 MiB): "
                  + (peakRSS <= bound ? "within" : "EXCEEDED"))
        }
        return peakRSS <= bound ? .success : .failure
    }

    /// The launch over the emulated platform or this host's KVM; a platform
    /// this host lacks is named with the way to emulate it.
    static func makeSession(_ setup: Setup) throws -> (LaunchSession, FakeKVM?) {
        let launch: LaunchPlatform = switch setup.platform {
        case .plain: .plain
        case .snp: .snp(SNPLaunchParameters())
        case .tdx: .tdx(TDXLaunchParameters())
        case .cca: .cca(CCABackend.defaultParameters)
        }
        guard setup.emulate else {
            let kvm = try KVM.open(using: try FeatureHidingKernel.hostKernel())
            do { return (try LaunchSession(kvm: kvm, platform: launch), nil) } catch {
                fail("bench populate: \(setup.platform) on this host's KVM: \(error); give --emulate to run over the emulated platform")
            }
        }
        var profile: HostProfile
        switch setup.platform {
        case .plain: profile = .thisMachine
        case .snp: profile = setup.policy == .inPlace ? .snpInPlaceHost : .snpHost
        case .tdx: profile = .tdxHost
        case .cca: profile = .ccaHost
        }
        if setup.policy == .inPlace, setup.platform != .snp {
            profile.inPlaceConversion = true
            profile.reworkedPopulation = true
        }
        let fake = FakeKVM(profile: profile)
        let session = try LaunchSession(kvm: try KVM.open(using: fake, experimental: [.inPlaceConversion, .armCCA]),
                                        platform: launch)
        return (session, fake)
    }

    /// The image: `size` bytes of a fixed pattern, written 64 MiB at a time.
    static func writeImage(_ path: String, size: UInt64) throws {
        let fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0o600)
        guard fd >= 0 else { throw Errno(rawValue: errno) }
        defer { close(fd) }
        let chunk = 64 << 20
        var words = [UInt64](repeating: 0, count: chunk / 8)
        var done: UInt64 = 0
        while done < size {
            let count = Int(min(UInt64(chunk), size - done))
            for index in 0..<(count / 8) { words[index] = ((done / 8) + UInt64(index)) &* 0x9E37_79B9_7F4A_7C15 }
            let written = words.withUnsafeBytes { pwrite(fd, $0.baseAddress, count, off_t(done)) }
            guard written == count else { throw Errno(rawValue: written < 0 ? errno : EIO) }
            done += UInt64(count)
        }
    }

    /// memcpy of `size` bytes, 64 MiB at a time, into fresh anonymous memory (page faults included).
    static func memcpyChunked(_ size: UInt64) throws -> Double {
        let chunk = 64 << 20
        let source = [UInt8](repeating: 0xA5, count: chunk)
        guard let memory = mmap(nil, Int(size), PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0),
              memory != MAP_FAILED
        else { throw Errno(rawValue: errno) }
        defer { munmap(memory, Int(size)) }
        let start = BenchPopulate.now()
        var done = 0
        while done < Int(size) {
            let count = min(chunk, Int(size) - done)
            source.withUnsafeBytes { _ = Glibc.memcpy(memory + done, $0.baseAddress!, count) }
            done += count
        }
        return BenchPopulate.now() - start
    }

    /// The process's peak resident set so far (getrusage's ru_maxrss, in KiB).
    static func peakResidentBytes() -> UInt64 {
        var usage = rusage()
        getrusage(RUSAGE_SELF.rawValue, &usage)
        return UInt64(usage.ru_maxrss) * 1024
    }
}
