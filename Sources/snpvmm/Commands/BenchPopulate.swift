import KVMFake
#if canImport(Glibc)
import Glibc
#endif
import GuestMemfd
import Populate
import VMMCore

/// `snpvmm bench populate`: filling guest_memfd in place and from a
/// separate source, against a plain memcpy into fresh anonymous memory, on
/// this host's real guest_memfd; and the ioctls each platform needs per GiB,
/// on the fake.
enum BenchPopulate {
    static let benchmark = BenchCommand.Benchmark(
        name: "populate",
        synopsis: "populate --size SIZE [--runs N] [--json] | populate --platform plain|snp|tdx|cca [--emulate] [--policy in-place|separate-source] --size SIZE [--json]",
        run: { run($0) })

    static func run(_ arguments: [String]) -> ExitCode {
        var size: UInt64 = 256 << 20, runs = 3
        let parser = ArgumentParser(options: [OptionSpec(names: ["--size"], takesValue: true),
                                              OptionSpec(names: ["--runs"], takesValue: true),
                                              OptionSpec(names: ["--json"], takesValue: false),
                                              OptionSpec(names: ["--platform"], takesValue: true),
                                              OptionSpec(names: ["--policy"], takesValue: true),
                                              OptionSpec(names: ["--emulate"], takesValue: false)],
                                    dialect: .snpvmm(command: "bench populate"))
        let given: ParsedArguments
        do { given = try parser.parse(arguments) } catch { fail("bench populate: \(error)", status: .usage) }
        if let text = given["--size"] {
            guard let value = parseSize(text), value > 0, value % pageSize == 0 else {
                fail("bench populate: --size needs a positive multiple of 4 KiB such as 256M or 1G", status: .usage)
            }
            size = value
        }
        if let text = given["--runs"] {
            guard let value = Int(text), value > 0 else { fail("bench populate: --runs needs a positive count", status: .usage) }
            runs = value
        }
        let json = given.has("--json")
        if let name = given["--platform"] {
            guard let platform = Platform(rawValue: name) else {
                fail("bench populate: --platform '\(name)' must be plain, snp, tdx or cca", status: .usage)
            }
            var policy: PopulationPolicy?
            if let text = given["--policy"] {
                guard let value = PopulationPolicy(rawValue: text) else {
                    fail("bench populate: --policy '\(text)' must be in-place or separate-source", status: .usage)
                }
                policy = value
            }
            guard given["--runs"] == nil else { fail("bench populate: --runs times the plain fill; a --platform launch runs once", status: .usage) }
            return BenchPopulateLaunch.run(.init(platform: platform, policy: policy, emulate: given.has("--emulate"), size: size), json: json)
        }
        for option in ["--policy", "--emulate"] where given.has(option) {
            fail("bench populate: \(option) describes a --platform launch; give --platform snp, tdx or cca", status: .usage)
        }
        do {
            let contents = (0..<Int(size)).map { UInt8(truncatingIfNeeded: $0 &* 131 &+ ($0 >> 12)) }
            let memcpy = try best(of: runs) { try memcpyIntoFreshMemory(contents) }
            let inPlace = try best(of: runs) { try fillInPlace(contents) }
            let separate = try best(of: runs) { try fillFromSeparateSource(contents) }
            let calls = try ioctlsPerGiB()
            let touch = try guestFirstTouch(pages: min(Int(size / pageSize), 16384), runs: runs)
            let gib = Double(size) / Double(1 << 30)
            if json {
                let perPlatform = calls.map { "\"\($0.0)\":\($0.1)" }.joined(separator: ",")
                print("{\"size\":\(size),\"runs\":\(runs),\"memcpy_seconds\":\(memcpy),\"inplace_seconds\":\(inPlace),"
                      + "\"separate_seconds\":\(separate),\"inplace_vs_memcpy\":\(memcpy / inPlace),"
                      + "\"separate_vs_memcpy\":\(memcpy / separate),\"ioctls_per_gib\":{\(perPlatform)},"
                      + "\"guest_touch_pages\":\(touch.pages),\"guest_touch_cold_seconds\":\(touch.cold),"
                      + "\"guest_touch_prepopulated_seconds\":\(touch.warm),\"prepopulate_seconds\":\(touch.host),"
                      + "\"prepopulation_method\":\"\(touch.method)\",\"guest_touch_saving\":\(1 - touch.warm / touch.cold)}")
            } else {
                print("populate \(size) bytes, best of \(runs) runs (ratio = memcpy time / this time; above 1 is faster)")
                print("  memcpy into fresh anonymous memory  \(ms(memcpy)) ms  \(rate(gib, memcpy)) GiB/s  (baseline)")
                print("  in place, through guest_memfd       \(ms(inPlace)) ms  \(rate(gib, inPlace)) GiB/s  ratio \(ratio(memcpy / inPlace))")
                print("  separate source, then copied in     \(ms(separate)) ms  \(rate(gib, separate)) GiB/s  ratio \(ratio(memcpy / separate))")
                print("guest first touch of \(touch.pages) pages (one byte each), best of \(runs) runs:")
                print("  no pre-population                   \(ms(touch.cold)) ms  (baseline)")
                print("  after \(touch.method.padding(30))\(ms(touch.warm)) ms  guest saves \(fixed3((1 - touch.warm / touch.cold) * 100))%,"
                      + " host spent \(String(ms(touch.host).drop { $0 == " " })) ms")
                print("population ioctls per GiB on the fake (2 MiB-aligned plan):")
                for (platform, count) in calls { print("  \(platform.padding(24)) \(count)") }
            }
            return .success
        } catch {
            fail("bench populate: \(error)")
        }
    }

    static func parseSize(_ text: String) -> UInt64? { SizeArgument(text).value }

    /// The fastest of `runs` timings, in seconds.
    static func best(of runs: Int, _ body: () throws -> Void) rethrows -> Double {
        var fastest = Double.infinity
        for _ in 0..<runs {
            let start = now()
            try body()
            fastest = min(fastest, now() - start)
        }
        return fastest
    }

    static func now() -> Double {
        var time = timespec()
        clock_gettime(CLOCK_MONOTONIC, &time)
        return Double(time.tv_sec) + Double(time.tv_nsec) / 1e9
    }

    /// The baseline: memcpy into anonymous memory nobody has touched, page faults included.
    static func memcpyIntoFreshMemory(_ contents: [UInt8]) throws {
        guard let memory = mmap(nil, contents.count, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0),
              memory != MAP_FAILED
        else { throw Errno(rawValue: errno) }
        defer { munmap(memory, contents.count) }
        contents.withUnsafeBytes { _ = Glibc.memcpy(memory, $0.baseAddress!, contents.count) }
    }

    /// A fresh guest_memfd on the real KVM, mapped and bound at GPA 0.
    static func freshGuestMemory(_ size: Int) throws -> (VM, GuestMemoryMapping) {
        let vm = try KVM.open().createVM()
        let memfd = try vm.createGuestMemfd(size: UInt64(size), flags: [.mmap, .initShared])
        let mapping = try memfd.map()
        try vm.setUserMemoryRegion2(UserMemoryRegion2(slot: 0, guestPhysicalAddress: 0, mapping: mapping))
        return (vm, mapping)
    }

    /// In place: the plain platform's population, written straight through the mapping.
    static func fillInPlace(_ contents: [UInt8]) throws {
        let (_, mapping) = try freshGuestMemory(contents.count)
        let layout = GuestMemoryLayout(slots: [.init(range: GuestRange(start: 0, size: UInt64(contents.count)), mapping: mapping)])
        let plan = LaunchPlan(regions: [PlanRegion(name: "image", range: GuestRange(start: 0, size: UInt64(contents.count)),
                                                   contents: .bytes(contents))])
        _ = try Populator(backend: PlainBackend(), memory: layout).populate(plan)
    }

    /// Separate source: the contents go into a page-aligned source buffer,
    /// then are copied into guest memory, as SNP and TDX firmware copy them,
    /// and the source is wiped.
    static func fillFromSeparateSource(_ contents: [UInt8]) throws {
        let (_, mapping) = try freshGuestMemory(contents.count)
        let source = UnsafeMutableRawPointer.allocate(byteCount: contents.count, alignment: Int(pageSize))
        defer { source.deallocate() }
        contents.withUnsafeBytes { _ = Glibc.memcpy(source, $0.baseAddress!, contents.count) }
        try mapping.write(UnsafeRawBufferPointer(start: source, count: contents.count), at: 0)
        explicit_bzero(source, contents.count)
    }

    /// A guest in flat 32-bit protected mode (paging off) that writes one
    /// byte to each of `pages` pages and halts:
    /// `mov $pages, %ecx; mov $base, %edi; 1: movb $1, (%edi); add $4096, %edi; dec %ecx; jnz 1b; hlt`.
    static func touchGuest(pages: UInt32, base: UInt32) -> [UInt8] {
        func le(_ value: UInt32) -> [UInt8] { (0..<4).map { UInt8(truncatingIfNeeded: value >> (8 * $0)) } }
        return [0xB9] + le(pages) + [0xBF] + le(base) + [0xC6, 0x07, 0x01, 0x81, 0xC7, 0x00, 0x10, 0x00, 0x00, 0x49, 0x75, 0xF4, 0xF4]
    }

    /// Times the guest touching fresh guest_memfd memory, then memory the
    /// host pre-populated first (Populator.prePopulate), on this host's KVM.
    static func guestFirstTouch(pages: Int, runs: Int) throws -> (pages: Int, cold: Double, warm: Double, host: Double, method: String) {
        let base: UInt64 = 0x100000
        var method = ""
        var host = Double.infinity
        func once(prePopulate: Bool) throws -> Double {
            let size = base + UInt64(pages) * pageSize
            let (vm, mapping) = try freshGuestMemory(Int(size))
            try mapping.write(touchGuest(pages: UInt32(pages), base: UInt32(base)), at: 0x1000)
            let vcpu = try vm.createVCPU(id: 0)
            if prePopulate {
                let layout = GuestMemoryLayout(slots: [.init(range: GuestRange(start: 0, size: size), mapping: mapping)])
                let start = now()
                method = try Populator(backend: PlainBackend(), memory: layout).prePopulate(vcpu: vcpu).description
                host = min(host, now() - start)
            }
            var sregs = try vcpu.getSregs()
            var code = sregs.cs
            code.base = 0
            code.limit = 0xFFFF_FFFF
            code.selector = 0x8
            code.type = 0xB
            code.present = 1
            code.s = 1
            code.db = 1
            code.g = 1
            code.l = 0
            var data = code
            data.selector = 0x10
            data.type = 0x3
            sregs.cs = code
            sregs.ds = data
            sregs.es = data
            sregs.ss = data
            sregs.cr0 |= 1
            try vcpu.setSregs(sregs)
            var regs = try vcpu.getRegs()
            regs.rip = 0x1000
            regs.rflags = 0x2
            try vcpu.setRegs(regs)
            let start = now()
            guard case .hlt = try vcpu.run() else { throw Errno.ioError }
            return now() - start
        }
        var cold = Double.infinity, warm = Double.infinity
        for _ in 0..<runs {
            cold = min(cold, try once(prePopulate: false))
            warm = min(warm, try once(prePopulate: true))
        }
        return (pages, cold, warm, host, method)
    }

    /// Population ioctls (conversions, calls, finish) for a 1 GiB plan of one
    /// 2 MiB-aligned region, for each platform and policy on the fake.
    static func ioctlsPerGiB() throws -> [(String, Int)] {
        let size: UInt64 = 1 << 30
        let plan = LaunchPlan(regions: [PlanRegion(name: "image", range: GuestRange(start: 0, size: size), contents: .zeros,
                                                   kind: .normal)])
        var results: [(String, Int)] = []
        let cases: [(String, HostProfile, LaunchPlatform)] = [
            ("SEV-SNP separate source", .snpHost, .snp(SNPLaunchParameters())),
            ("SEV-SNP in place", .snpInPlaceHost, .snp(SNPLaunchParameters())),
            ("TDX separate source", .tdxHost, .tdx(TDXLaunchParameters())),
            ("CCA separate source", .ccaHost, .cca(CCABackend.defaultParameters)),
        ]
        for (name, profile, platform) in cases {
            let fake = FakeKVM(profile: profile)
            let session = try LaunchSession(kvm: try KVM.open(using: fake, experimental: [.inPlaceConversion, .armCCA]),
                                            platform: platform)
            try session.createVCPUs(1)
            try session.createMemory(at: 0, size: size, slot: 0)
            var options = PopulateOptions()
            options.observer = fake.observer(of: session.vm)
            let result = try session.populate(plan, options: options)
            results.append((name, result.report.ioctls))
        }
        return results
    }

    static func ms(_ seconds: Double) -> String { fixed3(seconds * 1000).padding(10, left: true) }
    static func rate(_ gib: Double, _ seconds: Double) -> String { fixed3(gib / seconds).padding(7, left: true) }
    static func ratio(_ value: Double) -> String { fixed3(value) }

    /// A number with three decimals.
    static func fixed3(_ value: Double) -> String { String(value, decimals: 3) }
}
