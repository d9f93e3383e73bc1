import VMMCore
#if canImport(Glibc)
import Glibc
#endif
import GuestMemfd

/// `snpvmm bench boot`: the time from process start to the guest's first
/// serial byte, for `snpvmm run` (with each RAM backing the host offers:
/// guest_memfd and memfd, or memfd alone) and for Debian's QEMU
/// (`-M microvm` on KVM) booting the same PVH image in the same run, and
/// their ratios.
///
/// Each run is a fresh process whose standard output is a pipe; the clock
/// starts just before `posix_spawn` and stops when the first byte arrives.
/// The runs alternate between the two VMMs so that both see the same host.
enum BenchBoot {
    static let benchmark = BenchCommand.Benchmark(
        name: "boot", synopsis: "boot [--runs N] [--kernel FILE] [--initrd FILE] [--memory SIZE]", run: run)

    static let usage = """
        usage: snpvmm bench boot [--runs N] [--kernel FILE] [--initrd FILE] [--memory SIZE]

        Times process start to the guest's first serial byte for snpvmm run and for
        qemu-system-x86_64 -M microvm (KVM) booting the same PVH kernel, N runs each
        (default 10) after one warm-up, and reports medians and their ratio. snpvmm
        runs once per RAM backing the host offers (--ram guest_memfd where KVM can
        map guest_memfd, and --ram memfd everywhere), each with its own ratio. The
        kernel defaults to the pvh-check fixture guest of this checkout, with a
        module it accepts; memory defaults to 256M.
        """

    /// The fixture guest beside this source file's checkout.
    static let fixtureKernel: String = {
        // #filePath is <checkout>/Sources/snpvmm/Commands/BenchBoot.swift.
        var components = "\(#filePath)".split(separator: "/", omittingEmptySubsequences: false)
        components.removeLast(4)
        return components.joined(separator: "/") + "/Tests/Fixtures/Guests/pvh-check.elf"
    }()

    struct Options {
        var runs = 10
        var kernel: String?
        var initrd: String?
        var memory: UInt64 = RunOptions.defaultMemory
    }

    @Sendable static func run(_ arguments: [String]) -> ExitCode {
        var options = Options()
        let parser = ArgumentParser(options: [ArgumentParser.help] + ["--runs", "--kernel", "--initrd", "--memory"]
                                        .map { OptionSpec(names: [$0], takesValue: true) },
                                    dialect: .snpvmm(command: "bench boot"))
        let given: ParsedArguments
        do { given = try parser.parse(arguments) } catch { fail("bench boot: \(error)", status: .usage) }
        if given.has("--help") {
            print(usage)
            return .success
        }
        if let value = given["--runs"] {
            guard let runs = Int(value), (1...1000).contains(runs) else {
                fail("bench boot: --runs '\(value)' is not a number from 1 to 1000", status: .usage)
            }
            options.runs = runs
        }
        options.kernel = given["--kernel"]
        options.initrd = given["--initrd"]
        if let value = given["--memory"] {
            do { options.memory = try RunCommand.parseMemorySize(value) } catch {
                fail("bench boot: \(error.description)", status: .usage)
            }
        }
        let kernel = options.kernel ?? fixtureKernel
        guard access(kernel, R_OK) == 0 else {
            fail("bench boot: cannot read kernel '\(kernel)'; give --kernel FILE", status: .usage)
        }
        // The fixture guest checks its module; give it one it accepts, removed afterwards.
        var temporary: String?
        defer { if let temporary { unlink(temporary) } }
        var initrd = options.initrd
        if initrd == nil && options.kernel == nil {
            guard let path = writeFixtureModule() else { fail("bench boot: cannot write a module to /tmp") }
            temporary = path
            initrd = path
        }
        let commandLine = "console=ttyS0"
        let megabytes = options.memory >> 20
        let capabilities: HostCapabilities
        do {
            capabilities = try KVM.open(using: try FeatureHidingKernel.hostKernel()).capabilities()
        } catch {
            fail("bench boot: \(error)")
        }
        // Each backing `run --ram` accepts on this host, and why it refuses the others.
        var backings: [RAMBacking] = [], refused: [String] = []
        for ram in RAMBacking.allCases {
            var asked = RunOptions()
            asked.ram = ram == .guestMemfd ? .guestMemfd : .memfd
            switch GuestRun.hostPlan(asked, capabilities: capabilities) {
            case .success: backings.append(ram)
            case .failure(let refusal): refused.append("snpvmm run, \(ram.rawValue): not measured, \(refusal.message)")
            }
        }

        var snpvmm = [selfPath, "run", "--kernel", kernel, "--append", commandLine, "--memory", "\(megabytes)M"]
        var qemu = ["-M", "microvm", "-accel", "kvm", "-m", "\(megabytes)M", "-smp", "1", "-nodefaults",
                    "-no-user-config", "-display", "none", "-monitor", "none", "-serial", "stdio",
                    "-device", "isa-debug-exit,iobase=0xf4,iosize=4", "-no-reboot",
                    "-kernel", kernel, "-append", commandLine]
        if let initrd {
            snpvmm += ["--initrd", initrd]
            qemu += ["-initrd", initrd]
        }
        let qemuPath = findInPath("qemu-system-x86_64")

        var ours: [RAMBacking: [Sample]] = [:], theirs: [Sample] = []
        for round in 0...options.runs {
            for ram in backings {
                guard let sample = measure(snpvmm + ["--ram", ram.rawValue]) else {
                    fail("bench boot: snpvmm run --ram \(ram.rawValue) printed nothing; run it alone to see why")
                }
                if round > 0 { ours[ram, default: []].append(sample) }
            }
            if let qemuPath {
                guard let sample = measure([qemuPath] + qemu) else {
                    fail("bench boot: qemu-system-x86_64 printed nothing on the serial port; run it alone to see why")
                }
                if round > 0 { theirs.append(sample) }
            }
        }

        let name = kernel.split(separator: "/").last.map(String.init) ?? kernel
        print("boot: process start to the guest's first serial byte, \(name), \(megabytes) MiB, 1 vCPU, "
              + "\(options.runs) runs each after a warm-up")
        print("  \("".padding(20))\("median".leftPadded(to: 10, with: " "))\("min".leftPadded(to: 10, with: " "))"
              + "\("max".leftPadded(to: 10, with: " "))   whole run (median)")
        for ram in backings { print(row("snpvmm run, \(ram.rawValue)", ours[ram] ?? [])) }
        for line in refused { print("  \(line)") }
        guard qemuPath != nil else {
            print("  qemu-system-x86_64 is not installed (apt-get install qemu-system-x86), so there is no ratio")
            return .failure
        }
        print(row("qemu -M microvm", theirs))
        for ram in backings {
            let ratio = median((ours[ram] ?? []).map(\.firstByte)) / median(theirs.map(\.firstByte))
            print("  ratio snpvmm / qemu, \(ram.rawValue) RAM: \(format(ratio, decimals: 3)) (first byte, medians)")
        }
        return .success
    }

    struct Sample {
        var firstByte: Double
        var whole: Double
    }

    /// Spawns `command` with its standard output on a pipe and times the
    /// first byte and the process's exit. Nil when it printed nothing.
    static func measure(_ command: [String]) -> Sample? {
        var pipeEnds: [Int32] = [0, 0]
        guard pipe(&pipeEnds) == 0 else { return nil }
        var actions = posix_spawn_file_actions_t()
        posix_spawn_file_actions_init(&actions)
        defer { posix_spawn_file_actions_destroy(&actions) }
        posix_spawn_file_actions_adddup2(&actions, pipeEnds[1], 1)
        posix_spawn_file_actions_addclose(&actions, pipeEnds[0])
        posix_spawn_file_actions_addopen(&actions, 2, "/dev/null", O_WRONLY, 0)
        posix_spawn_file_actions_addopen(&actions, 0, "/dev/null", O_RDONLY, 0)
        let argv = command.map { strdup($0) } + [nil]
        defer { argv.forEach { free($0) } }
        var pid: pid_t = 0
        let start = now()
        guard posix_spawn(&pid, command[0], &actions, nil, argv, environ) == 0 else {
            close(pipeEnds[0]); close(pipeEnds[1])
            return nil
        }
        close(pipeEnds[1])
        var buffer = [UInt8](repeating: 0, count: 4096)
        var firstByte: Double?
        while true {
            let count = read(pipeEnds[0], &buffer, buffer.count)
            if count < 0 && errno == EINTR { continue }
            if count <= 0 { break }
            if firstByte == nil { firstByte = now() - start }
        }
        close(pipeEnds[0])
        var status: Int32 = 0
        while waitpid(pid, &status, 0) < 0 && errno == EINTR {}
        let whole = now() - start
        return firstByte.map { Sample(firstByte: $0, whole: whole) }
    }

    static func now() -> Double {
        var time = timespec()
        clock_gettime(CLOCK_MONOTONIC, &time)
        return Double(time.tv_sec) + Double(time.tv_nsec) / 1e9
    }

    /// A 4 KiB module for pvh-check: a payload and, last, its hash h = h * 31 + byte.
    static func writeFixtureModule() -> String? {
        var payload = (0..<4092).map { UInt8(truncatingIfNeeded: $0 &* 13 &+ 5) }
        let hash = payload.reduce(UInt32(0)) { $0 &* 31 &+ UInt32($1) }
        payload += (0..<4).map { UInt8(truncatingIfNeeded: hash >> (8 * $0)) }
        var template = Array("/tmp/snpvmm-bench-XXXXXX".utf8CString)
        let fd = mkstemp(&template)
        guard fd >= 0 else { return nil }
        defer { close(fd) }
        let path = String(decoding: template.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self)
        guard payload.withUnsafeBytes({ Glibc.write(fd, $0.baseAddress, $0.count) }) == payload.count else {
            unlink(path)
            return nil
        }
        return path
    }

    static var selfPath: String {
        var buffer = [CChar](repeating: 0, count: Int(PATH_MAX) + 1)
        let count = readlink("/proc/self/exe", &buffer, Int(PATH_MAX))
        return count > 0 ? String(decoding: buffer[..<count].map { UInt8(bitPattern: $0) }, as: UTF8.self)
            : CommandLine.arguments[0]
    }

    static func findInPath(_ name: String) -> String? {
        let path = getenv("PATH").map { String(cString: $0) } ?? "/usr/bin:/bin"
        return path.split(separator: ":").map { "\($0)/\(name)" }.first { access($0, X_OK) == 0 }
    }

    static func median(_ values: [Double]) -> Double {
        let sorted = values.sorted()
        return sorted.count % 2 == 1 ? sorted[sorted.count / 2] : (sorted[sorted.count / 2 - 1] + sorted[sorted.count / 2]) / 2
    }

    static func row(_ name: String, _ samples: [Sample]) -> String {
        let first = samples.map(\.firstByte)
        func ms(_ seconds: Double) -> String { (format(seconds * 1000, decimals: 1) + " ms").leftPadded(to: 10, with: " ") }
        return "  \(name.padding(20))\(ms(median(first)))\(ms(first.min() ?? 0))\(ms(first.max() ?? 0))   "
            + ms(median(samples.map(\.whole))).trimmingLeadingSpaces
    }

    /// `value` with `decimals` digits after the point.
    static func format(_ value: Double, decimals: Int) -> String {
        let scale = (0..<decimals).reduce(1) { product, _ in product * 10 }
        let units = Int((value * Double(scale)).rounded())
        guard decimals > 0 else { return String(units) }
        let fraction = String(abs(units) % scale).leftPadded(to: decimals)
        return "\(units < 0 ? "-" : "")\(abs(units) / scale).\(fraction)"
    }
}

private extension String {
    func padding(_ width: Int) -> String { count >= width ? self + " " : self + String(repeating: " ", count: width - count) }
    var trimmingLeadingSpaces: String { String(drop { $0 == " " }) }
}
