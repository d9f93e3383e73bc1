import Fixtures
import Foundation
import GuestMemfd
import Testing

/// `snpvmm run` as a user runs it: the built binary, with its standard
/// output, standard error and exit status compared exactly.
@Suite(.enabled(if: Snpvmm.isBuilt, "the snpvmm executable is not built beside the tests"))
struct RunCLITests {
    let directory: TemporaryDirectory
    let kernel = Fixtures.pvhCheckPath

    init() throws { directory = try TemporaryDirectory() }

    @Test(.requiresKVM(.kvm))
    func fixtureGuestBootsPrintsItsChecksAndExitsThroughDebugExit() throws {
        let payload = Array("a module for pvh-check\n".utf8)
        let initrd = try directory.write("initrd", Fixtures.pvhCheckModule(payload))
        let outcome = try Snpvmm.run(["run", "--kernel", kernel, "--initrd", initrd, "--append", "console=ttyS0 quiet",
                                      "--memory", "256M"])
        #expect(outcome == Snpvmm.Outcome(
            stdout: RealBootTests.pvhCheckOutput(commandLine: "console=ttyS0 quiet", payload: payload,
                                                 memoryMap: RealBootTests.map256M),
            stderr: Snpvmm.ramNote, status: 33))
    }

    /// Boots the fixture guest with `--ram ram` and expects its checks to
    /// pass with nothing on standard error: a backing asked for needs no note.
    func bootsWithoutANote(ram: String) throws {
        let payload = Array("\(ram) RAM\n".utf8)
        let initrd = try directory.write("initrd", Fixtures.pvhCheckModule(payload))
        let outcome = try Snpvmm.run(["run", "--kernel", kernel, "--initrd", initrd, "--ram", ram])
        #expect(outcome == Snpvmm.Outcome(
            stdout: RealBootTests.pvhCheckOutput(commandLine: "", payload: payload, memoryMap: RealBootTests.map256M),
            stderr: "", status: 33))
    }

    @Test(.requiresKVM(.kvm))
    func memfdRAMAskedForBootsTheSameGuestWithoutANote() throws { try bootsWithoutANote(ram: "memfd") }

    @Test(.requiresKVM(.mmap))
    func guestMemfdRAMAskedForBootsWithoutANote() throws { try bootsWithoutANote(ram: "guest_memfd") }

    @Test(.requiresKVMWithout(.guestMemfd))
    func guestMemfdRAMOnAKVMWithoutItIsRefusedInOneLineNamingTheCapability() throws {
        let outcome = try Snpvmm.run(["run", "--kernel", kernel, "--ram", "guest_memfd"])
        #expect(outcome == Snpvmm.Outcome(
            stdout: "",
            stderr: "snpvmm: --ram guest_memfd: host KVM lacks guest_memfd (KVM_CAP_GUEST_MEMFD = 0); a plain guest's RAM must be guest_memfd the host can write (use --ram memfd or auto)\n",
            status: 1))
    }

    @Test(.requiresKVM(.kvm))
    func tripleFaultIsReportedOnStandardErrorAndEndsTheRunCleanly() throws {
        let path = try directory.write("ud2.elf", ELFBuilder.pvh([0x0F, 0x0B]).build())
        #expect(try Snpvmm.run(["run", "--kernel", path]) == Snpvmm.Outcome(
            stdout: "", stderr: Snpvmm.ramNote + "snpvmm: the guest triple-faulted (KVM_EXIT_SHUTDOWN); the run is over\n",
            status: 0))
    }

    @Test(.requiresKVM(.kvm))
    func guestHaltedWithInterruptsOffEndsWithStatusZero() throws {
        let path = try directory.write("halt.elf", ELFBuilder.pvh(RealBootTests.printThenHalt).build())
        #expect(try Snpvmm.run(["run", "--kernel", path, "--cpus", "2"]) == Snpvmm.Outcome(stdout: "h", stderr: Snpvmm.ramNote, status: 0))
    }

    @Test func helpExplainsTheFlags() throws {
        let outcome = try Snpvmm.run(["run", "--help"])
        #expect(outcome.status == 0 && outcome.stderr.isEmpty)
        for flag in ["--kernel FILE", "--initrd FILE", "--append STR", "--memory SIZE", "--cpus N", "--platform NAME",
                     "--emulate", "--ledger FILE", "--ram KIND", "QEMU's -kernel", "QEMU's -m", "QEMU's -smp"] {
            #expect(outcome.stdout.contains(flag), "help lacks \(flag)")
        }
    }

    /// A command line and the one line it must be refused with, exit status 2.
    struct Refusal: CustomTestStringConvertible, Sendable {
        let name: String
        let arguments: @Sendable (TemporaryDirectory, String) throws -> [String]
        let message: @Sendable (TemporaryDirectory) -> String
        var testDescription: String { name }

        init(_ name: String, _ arguments: @escaping @Sendable (TemporaryDirectory, String) throws -> [String],
             _ message: @escaping @Sendable (TemporaryDirectory) -> String) {
            self.name = name
            self.arguments = arguments
            self.message = message
        }

        init(_ name: String, _ arguments: @escaping @Sendable (TemporaryDirectory, String) throws -> [String], _ message: String) {
            self.init(name, arguments, { _ in message })
        }
    }

    static let refusals: [Refusal] = [
        Refusal("no kernel", { _, _ in [] }, "run: --kernel FILE is required (see snpvmm run --help)"),
        Refusal("kernel without a value", { _, _ in ["--kernel"] }, "run: --kernel needs a value"),
        Refusal("unknown option", { _, k in ["--kernel", k, "--frobnicate"] },
                "run: unknown option '--frobnicate' (see snpvmm run --help)"),
        Refusal("flag given twice", { _, k in ["--kernel", k, "--kernel=\(k)"] }, "run: --kernel is given twice"),
        Refusal("size with an unknown suffix", { _, k in ["--kernel", k, "--memory", "12Q"] },
                "run: --memory '12Q' is not a size: give a number of MiB, or a number with the suffix K, M, G or T"),
        Refusal("size with a fraction", { _, k in ["--kernel", k, "--memory=1.5G"] },
                "run: --memory '1.5G' is not a size: give a number of MiB, or a number with the suffix K, M, G or T"),
        Refusal("memory too small", { _, k in ["--kernel", k, "--memory", "1"] },
                "run: --memory '1' is less than the 2 MiB a guest needs"),
        Refusal("memory not in pages", { _, k in ["--kernel", k, "--memory", "4097K"] },
                "run: --memory '4097K' is not a multiple of 4 KiB"),
        Refusal("memory too large", { _, k in ["--kernel", k, "--memory", "2T"] },
                "run: --memory '2T' is more than the 1 TiB snpvmm gives a guest"),
        Refusal("no vCPUs", { _, k in ["--kernel", k, "--cpus", "0"] }, "run: --cpus '0' is not a number from 1 to 32"),
        Refusal("unknown platform", { _, k in ["--kernel", k, "--platform", "sev"] },
                "run: --platform 'sev' is not one of plain, snp, tdx, cca"),
        Refusal("emulate on plain", { _, k in ["--kernel", k, "--emulate"] },
                "run: --emulate applies to --platform snp, tdx or cca"),
        Refusal("unknown RAM backing", { _, k in ["--kernel", k, "--ram", "hugetlbfs"] },
                "run: --ram 'hugetlbfs' is not one of auto, guest_memfd, memfd"),
        Refusal("memfd RAM for a real SNP launch", { _, k in ["--kernel", k, "--platform", "snp", "--ram", "memfd"] },
                "run: --ram memfd holds no private memory; an SEV-SNP launch needs guest_memfd (or --emulate)"),
        Refusal("ledger on plain", { _, k in ["--kernel", k, "--ledger", "ledger.json"] },
                "run: --ledger accounts for a confidential launch; give --platform snp, tdx or cca"),
        Refusal("missing kernel file", { d, _ in ["--kernel", d.path + "/absent"] },
                { d in "run: cannot read kernel '\(d.path)/absent': No such file or directory" }),
        Refusal("kernel is a directory", { d, _ in ["--kernel", d.path] },
                { d in "run: cannot read kernel '\(d.path)': not a regular file" }),
        Refusal("missing initrd file", { d, k in ["--kernel", k, "--initrd", d.path + "/absent"] },
                { d in "run: cannot read initrd '\(d.path)/absent': No such file or directory" }),
        Refusal("empty kernel", { d, _ in ["--kernel", try d.write("empty", [])] },
                { d in "run: kernel '\(d.path)/empty' is empty" }),
        Refusal("script as kernel", { d, _ in ["--kernel", try d.write("script", Array("#!/bin/sh\necho\n".utf8))] },
                { d in "run: kernel '\(d.path)/script' is neither an ELF64 kernel with a PVH entry note nor a Linux bzImage (it starts with 23 21 2f 62)" }),
        Refusal("32-bit ELF", { d, _ in
            var elf = ELFBuilder.pvh([0xF4]); elf.elfClass = 1
            return ["--kernel", try d.write("elf32", elf.build())]
        }, { d in "run: kernel '\(d.path)/elf32' is a 32-bit ELF (ELFCLASS32); snpvmm boots x86-64 ELF64 executables with a Xen PVH entry note" }),
        Refusal("initrd larger than memory", { d, k in
            ["--kernel", k, "--initrd", try d.write("big", [UInt8](repeating: 1, count: 3 << 20)), "--memory", "3M"]
        }, "run: initrd (3145728 bytes) does not fit: it must lie between the kernel's end at 0x202404 and 0x300000 (the top of RAM below 4 GiB)"),
        Refusal("kernel segment beyond memory", { _, k in ["--kernel", k, "--memory", "2M"] },
                "run: kernel segment 1 [0x200000, 0x202404) (9220 bytes) does not fit: it is outside the guest's RAM, [0x0, 0x200000)"),
        Refusal("segment overlapping the boot tables", { d, _ in
            ["--kernel", try d.write("low.elf", ELFBuilder.pvh([0xF4], at: 0x6000).build())]
        }, "run: plan region 4 'kernel segment 0' [0x6000, 0x7000) overlaps region 2 'hvm_start_info'"),
    ]

    @Test(arguments: refusals)
    func badCommandLinesAndImagesAreRefusedWithOneLineAndStatusTwo(_ refusal: Refusal) throws {
        let arguments = try refusal.arguments(directory, kernel)
        let created = try FileManager.default.contentsOfDirectory(atPath: directory.path).sorted()
        let outcome = try Snpvmm.run(["run"] + arguments)
        #expect(outcome == Snpvmm.Outcome(stdout: "", stderr: "snpvmm: \(refusal.message(directory))\n", status: 2))
        // Nothing left behind: the directory holds only what the test wrote.
        #expect(try FileManager.default.contentsOfDirectory(atPath: directory.path).sorted() == created)
    }

    /// The emulated platform launches the plan (its firmware's measurement
    /// must equal the engine's, or the run stops), prints the measurement,
    /// writes the ledger, and the same guest then runs on this host's VM.
    @Test(.requiresKVM(.kvm), arguments: ["snp", "tdx", "cca"])
    func emulatedLaunchPrintsTheMeasurementWritesTheLedgerThenBootsTheGuest(_ platform: String) throws {
        let payload = Array("a module for pvh-check\n".utf8)
        let initrd = try directory.write("initrd", Fixtures.pvhCheckModule(payload))
        let ledger = directory.path + "/ledger.jsonl"
        let outcome = try Snpvmm.run(["run", "--kernel", kernel, "--initrd", initrd, "--append", "console=ttyS0 quiet",
                                      "--memory", "256M", "--platform", platform, "--emulate", "--ledger", ledger])
        #expect(outcome.status == 33)
        #expect(outcome.stdout == RealBootTests.pvhCheckOutput(commandLine: "console=ttyS0 quiet", payload: payload,
                                                               memoryMap: RealBootTests.map256M))
        // The note on guest RAM, where the host has no guest_memfd to map, comes first.
        #expect(outcome.stderr.hasPrefix(Snpvmm.ramNote))
        let prefix = "snpvmm: emulated \(platform) launch measurement "
        let first = try #require(outcome.stderr.dropFirst(Snpvmm.ramNote.count).split(separator: "\n").first.map(String.init))
        #expect(first.hasPrefix(prefix))
        let measurement = String(first.dropFirst(prefix.count))
        #expect(measurement.count == (platform == "cca" ? 64 : 96))
        let lines = try String(contentsOfFile: ledger, encoding: .utf8).split(separator: "\n")
        #expect(lines.count > 3)
        #expect(lines.last?.contains("\"measurement\":\"\(measurement)\"") == true)
    }

    /// `mov $0xfe, %al; out %al, $0x64; hlt`: a reset through the i8042 on every boot.
    static let resetThroughI8042: [UInt8] = [0xB0, 0xFE, 0xE6, 0x64, 0xF4]
    /// `ud2` with no IDT: a triple fault on every boot.
    static let tripleFault: [UInt8] = [0x0F, 0x0B]

    /// A confidential guest that resets is launched again in a new VM from
    /// the same plan, which the emulated firmware measures the same, as
    /// often as it resets (QEMU reboots forever too; the test stops it).
    @Test(.requiresKVM(.kvm), arguments: [("snp", resetThroughI8042, "i8042 reset"),
                                          ("tdx", tripleFault, "triple fault (KVM_EXIT_SHUTDOWN)"),
                                          ("cca", resetThroughI8042, "i8042 reset")])
    func aConfidentialGuestThatResetsIsLaunchedAgainWithTheSameMeasurement(platform: String, code: [UInt8], reason: String) throws {
        let path = try directory.write("reset.elf", ELFBuilder.pvh(code).build())
        let prefix = "snpvmm: emulated \(platform) launch measurement "
        let (output, found) = try Snpvmm.runUntil(["run", "--kernel", path, "--platform", platform, "--emulate"],
                                                  marker: prefix, occurrences: 3, standardError: true, timeout: 30)
        #expect(found, "\(output)")
        let measurements = output.split(separator: "\n").filter { $0.hasPrefix(prefix) }.map { $0.dropFirst(prefix.count) }
        #expect(measurements.count >= 3)
        #expect(Set(measurements).count == 1, "every launch from the same plan measures the same")
        let relaunch = "snpvmm: the guest reset (\(reason)); launching a new VM from the same plan (--no-reboot ends the run instead)"
        #expect(output.components(separatedBy: relaunch).count - 1 >= 2, "\(output)")
    }

    @Test(.requiresKVM(.kvm))
    func noRebootEndsTheRunAtAConfidentialGuestsFirstReset() throws {
        let path = try directory.write("reset.elf", ELFBuilder.pvh(Self.resetThroughI8042).build())
        let outcome = try Snpvmm.run(["run", "--kernel", path, "--platform", "snp", "--emulate", "--no-reboot"])
        #expect(outcome.status == 0)
        #expect(outcome.stderr.components(separatedBy: "launch measurement ").count == 2, "one launch: \(outcome.stderr)")
        #expect(!outcome.stderr.contains("launching a new VM"))
    }

    @Test(.requiresKVM(.kvm))
    func aPlainGuestsResetEndsTheRunAsBefore() throws {
        let path = try directory.write("reset.elf", ELFBuilder.pvh(Self.resetThroughI8042).build())
        #expect(try Snpvmm.run(["run", "--kernel", path]) == Snpvmm.Outcome(stdout: "", stderr: Snpvmm.ramNote, status: 0))
    }

    @Test(.requiresKVM(.kvm))
    func confidentialPlatformOnAHostWithoutItNamesWhatIsMissing() throws {
        let offered = try KVMHost.open().capabilities().vmTypes
        try #require(!offered.contains(.snp), "this host offers SNP; the refusal applies to hosts without it")
        let outcome = try Snpvmm.run(["run", "--kernel", kernel, "--platform", "snp"])
        #expect(outcome == Snpvmm.Outcome(
            stdout: "",
            stderr: "snpvmm: --platform snp needs a host whose KVM offers KVM_X86_SNP_VM; this host offers \(offered.map(\.name).joined(separator: ", ")) (use --emulate to run over the emulated platform)\n",
            status: 1))
    }

    @Test(.requiresKVM(.kvm), arguments: ["tdx", "cca"])
    func tdxAndCCAWithoutEmulateSayWhyInOneLine(_ platform: String) throws {
        let outcome = try Snpvmm.run(["run", "--kernel", kernel, "--platform", platform])
        #expect(outcome.status == 1)
        #expect(outcome.stdout == "")
        #expect(outcome.stderr.hasPrefix("snpvmm: --platform \(platform) "))
        #expect(outcome.stderr.hasSuffix("(use --emulate to run over the emulated platform)\n"))
        #expect(outcome.stderr.filter { $0 == "\n" }.count == 1)
    }
}

/// Debian's kernel through the bzImage loader, until its decompressor
/// speaks. Guest kernel code is emulated on hosts without hardware
/// virtualization, so only the decompressor's first message is awaited
/// (about 2 s here); the full boot is scripts/boot-linux.
@Suite(.enabled(if: Snpvmm.isBuilt, "the snpvmm executable is not built beside the tests"))
struct BzImageBootTests {
    @Test(.requiresKVM(.kvm),
          .enabled(if: DebianKernel.path != nil, "Debian's kernel is not in .build-fixtures (run scripts/setup)"))
    func debianKernelDecompressorPrintsOnTheSerialConsole() throws {
        let marker = "KASLR disabled: 'nokaslr' on cmdline."
        let result = try Snpvmm.runUntil(["run", "--kernel", DebianKernel.path!, "--append",
                                          "console=ttyS0 earlyprintk=serial nokaslr"], marker: marker, timeout: 10)
        #expect(result.found, "no '\(marker)' within 10 s; the console said: \(result.output.debugDescription)")
    }
}
