#if canImport(Glibc)
import Glibc
#endif
import GuestMemfd
import Populate
import VMMCore

/// `snpvmm bench cycles`: resource hygiene on this host's KVM. Each cycle
/// opens /dev/kvm, creates a VM and its RAM (a guest_memfd, or a memfd on
/// hosts without guest_memfd the host can map), populates a tiny
/// real-mode guest in place through Populate, runs it to its exit and
/// releases everything; the process's descriptors, mappings and resident
/// memory are compared before the cycles (after a warm-up) and after.
enum BenchCycles {
    static let benchmark = BenchCommand.Benchmark(name: "cycles", synopsis: "cycles [--count N] [--ram auto|guest_memfd|memfd]", run: { run($0) })

    static let usage = """
        usage: snpvmm bench cycles [--count N] [--ram auto|guest_memfd|memfd]

        Runs N create, populate, run, destroy cycles (default 1000) on /dev/kvm, with
        guest RAM from guest_memfd or a memfd (auto: guest_memfd where the host can
        map it), after
        \(warmUp) warm-up cycles, and compares the process's open descriptors, mappings
        and resident memory before and after. Exits with status 1 if descriptors or
        mappings grew, or resident memory grew by more than \(residentTolerance >> 10) KiB.
        """

    static let warmUp = 5

    /// How far resident memory may grow without counting as a leak. malloc
    /// keeps freed memory in its arenas and the Swift runtime fills its
    /// metadata caches lazily, so a few pages come and go between samples;
    /// a leak of 512 bytes a cycle adds twice this over 1,000 cycles, and a
    /// leaked guest_memfd mapping or descriptor shows in its own count at once.
    static let residentTolerance = 256 << 10

    /// The guest's memory, its code and data addresses, and the port it reports on.
    static let memorySize: UInt64 = 0x10_0000
    static let codeAddress: UInt64 = 0x1000
    static let dataAddress: UInt64 = 0x2000
    static let dataCount = 512
    static let reportPort: UInt16 = 0xF4

    /// 16-bit real mode: adds the bytes at `dataAddress`, writes the low
    /// byte of the sum to `reportPort`, and halts.
    /// `mov $data, %si; mov $count, %cx; xor %ax, %ax; 1: add (%si), %al; inc %si; loop 1b; out %al, $0xf4; hlt`.
    static var guestCode: [UInt8] {
        [0xBE, UInt8(dataAddress & 0xFF), UInt8(dataAddress >> 8), 0xB9, UInt8(dataCount & 0xFF), UInt8(dataCount >> 8),
         0x31, 0xC0, 0x02, 0x04, 0x46, 0xE2, 0xFB, 0xE6, UInt8(reportPort), 0xF4]
    }

    /// What the process holds: open descriptors, mappings, resident bytes.
    struct Resources: Equatable {
        var descriptors: Int
        var mappings: Int
        var residentBytes: Int
    }

    /// Reads /proc/self/fd, /proc/self/maps and /proc/self/statm.
    static func resources() -> Resources {
        var descriptors = 0
        if let directory = opendir("/proc/self/fd") {
            while let entry = readdir(directory) {
                let name = withUnsafeBytes(of: entry.pointee.d_name) { String(decoding: $0.prefix { $0 != 0 }, as: UTF8.self) }
                if name != "." && name != ".." { descriptors += 1 }
            }
            closedir(directory)
            descriptors -= 1  // the directory's own descriptor
        }
        let maps = procFile("/proc/self/maps")
        let statm = String(decoding: procFile("/proc/self/statm"), as: UTF8.self).split(separator: " ")
        let resident = statm.count > 1 ? Int(statm[1]) ?? 0 : 0
        return Resources(descriptors: descriptors, mappings: maps.filter { $0 == 0x0A }.count,
                         residentBytes: resident * Int(sysconf(Int32(_SC_PAGESIZE))))
    }

    /// A /proc file's bytes, read through a small buffer so that reading
    /// does not itself map memory.
    static func procFile(_ path: String) -> [UInt8] {
        let fd = open(path, O_RDONLY | O_CLOEXEC)
        guard fd >= 0 else { return [] }
        defer { close(fd) }
        var bytes: [UInt8] = []
        var chunk = [UInt8](repeating: 0, count: 4096)
        while true {
            let count = chunk.withUnsafeMutableBytes { Glibc.read(fd, $0.baseAddress, $0.count) }
            if count < 0 && errno == EINTR { continue }
            if count <= 0 { return bytes }
            bytes += chunk[0..<count]
        }
    }

    /// The data of cycle `index`: a different pattern each time, so each
    /// cycle's guest proves it read what that cycle populated.
    static func data(_ index: Int) -> [UInt8] {
        (0..<dataCount).map { UInt8(truncatingIfNeeded: $0 &* 31 &+ index &* 7 &+ 1) }
    }

    /// One cycle; every object is released when it returns.
    ///
    /// - Throws: `KVMError` or `PopulateError` as they come, or
    ///   `CycleError` when the guest reports the wrong sum or exits otherwise.
    static func cycle(_ index: Int, kernel: any KernelInterface, ram: RAMBacking) throws {
        let session = try LaunchSession(kvm: try KVM.open(using: kernel), platform: .plain)
        try session.addMemory(try session.vm.bindSmallRAM(ram, size: memorySize))
        let vcpu = try session.createVCPUs(1)[0]
        let data = data(index)
        let plan = LaunchPlan(regions: [
            PlanRegion(name: "code", range: GuestRange(start: codeAddress, size: pageSize), contents: .bytes(guestCode)),
            PlanRegion(name: "data", range: GuestRange(start: dataAddress, size: pageSize), contents: .bytes(data)),
        ])
        _ = try session.populate(plan)
        try vcpu.enterRealMode(at: codeAddress)
        let expected = UInt32(data.reduce(UInt8(0), &+))
        guard case .io(let io) = try vcpu.run(), io.port == reportPort, io.value & 0xFF == expected else {
            throw CycleError(index: index, what: "the guest did not report the sum \(expected) of its data on port 0x\(String(reportPort, radix: 16))")
        }
        guard case .hlt = try vcpu.run() else {
            throw CycleError(index: index, what: "the guest did not halt after its report")
        }
    }

    struct CycleError: Error, CustomStringConvertible {
        let index: Int
        let what: String
        var description: String { "cycle \(index): \(what)" }
    }

    static func run(_ arguments: [String]) -> ExitCode {
        var count = 1000
        var choice = RAMChoice.auto
        let parser = ArgumentParser(options: [ArgumentParser.help, OptionSpec(names: ["--count"], takesValue: true),
                                              OptionSpec(names: ["--ram"], takesValue: true)],
                                    dialect: .snpvmm(command: "bench cycles"))
        let given: ParsedArguments
        do { given = try parser.parse(arguments) } catch { fail("bench cycles: \(error)", status: .usage) }
        if given.has("--help") {
            print(usage)
            return .success
        }
        if let text = given["--count"] {
            guard let value = Int(text), value > 0 else { fail("bench cycles: --count needs a positive number", status: .usage) }
            count = value
        }
        if let text = given["--ram"] {
            guard let value = RAMChoice(rawValue: text) else {
                fail("bench cycles: --ram needs one of \(RAMChoice.allCases.map(\.rawValue).joined(separator: ", "))", status: .usage)
            }
            choice = value
        }
        do {
            let kernel = try FeatureHidingKernel.hostKernel()
            var options = RunOptions()
            options.ram = choice
            let ram: RAMBacking
            switch GuestRun.hostPlan(options, capabilities: try KVM.open(using: kernel).capabilities()) {
            case .success(let plan): ram = plan.ram
            case .failure(let refusal): fail("bench cycles: \(refusal.message)")
            }
            for cycle in 0..<warmUp {
                try self.cycle(cycle, kernel: kernel, ram: ram)
                _ = resources()
            }
            let before = resources()
            let start = BenchPopulate.now()
            for cycle in 0..<count { try self.cycle(warmUp + cycle, kernel: kernel, ram: ram) }
            let seconds = BenchPopulate.now() - start
            let after = resources()
            print("cycles: open /dev/kvm, create a VM and its \(ram.rawValue) RAM, populate in place, run the guest to its exit,"
                  + " release; \(count) cycles after \(warmUp) warm-up cycles")
            print("  time          \(BenchPopulate.fixed3(seconds)) s, \(BenchPopulate.fixed3(seconds * 1000 / Double(count))) ms a cycle")
            print("                      before      after     change")
            func line(_ name: String, _ before: Int, _ after: Int, _ note: String) {
                let change = after - before
                print("  \(name.padding(14))\(String(before).padding(10, left: true))\(String(after).padding(11, left: true))"
                      + "\((change >= 0 ? "+\(change)" : "\(change)").padding(11, left: true))  \(note)")
            }
            line("descriptors", before.descriptors, after.descriptors, "(must not grow)")
            line("mappings", before.mappings, after.mappings, "(must not grow)")
            line("resident KiB", before.residentBytes >> 10, after.residentBytes >> 10,
                 "(may grow by \(residentTolerance >> 10) KiB: allocator and runtime caches)")
            var problems: [String] = []
            if after.descriptors > before.descriptors { problems.append("\(after.descriptors - before.descriptors) descriptors leaked") }
            if after.mappings > before.mappings { problems.append("\(after.mappings - before.mappings) mappings leaked") }
            if after.residentBytes - before.residentBytes > residentTolerance {
                problems.append("resident memory grew by \((after.residentBytes - before.residentBytes) >> 10) KiB")
            }
            if !problems.isEmpty { fail("bench cycles: " + problems.joined(separator: ", ")) }
            return .success
        } catch {
            fail("bench cycles: \(error)")
        }
    }
}
