import GuestMemfd
import Populate
import VMMCore

/// `snpvmm probe`: reports what the host's KVM offers, its capability tier
/// and what each missing capability costs, then runs a 12-byte real-mode
/// guest that prints a message on the serial port: from guest_memfd memory
/// where the host can map guest_memfd, from a memfd mapped shared otherwise.
enum ProbeCommand {
    static let summary = """
        probe [--no-boot] [--json]
                            show what this host's KVM offers for guest_memfd and
                            confidential guests and its capability tier, then boot
                            a tiny guest from guest_memfd (or, without it, memfd)
                            memory to prove the path works
        """

    /// The guest: `mov $0x3f8, %dx; 1: lodsb; test %al, %al; jz 2f; out %al, %dx; jmp 1b; 2: hlt`.
    static let guestCode: [UInt8] = [0xBA, 0xF8, 0x03, 0xAC, 0x84, 0xC0, 0x74, 0x03, 0xEE, 0xEB, 0xF8, 0xF4]
    static let codeAddress: UInt64 = 0x1000
    static let messageAddress: UInt64 = 0x2000
    static let serialPort: UInt16 = 0x3F8

    /// The message the guest is given to print, naming the memory it runs from.
    static func message(_ ram: RAMBacking) -> String { "hello from \(ram.rawValue)\n" }

    /// The features whose absence `probe` explains, each once its prerequisite is present.
    static let explained: [(feature: KVMFeature, prerequisite: KVMFeature?)] = [
        (.guestMemfd, nil), (.mmap, .guestMemfd), (.memoryAttributes, nil), (.preFault, nil), (.confidential, nil),
    ]

    static func run(_ arguments: [String]) -> ExitCode {
        let parser = ArgumentParser(options: [OptionSpec(names: ["--no-boot"], takesValue: false),
                                              OptionSpec(names: ["--json"], takesValue: false)],
                                    dialect: .snpvmm(command: "probe"))
        let given: ParsedArguments
        do { given = try parser.parse(arguments) } catch { fail("probe: \(error)", status: .usage) }
        let boot = !given.has("--no-boot"), json = given.has("--json")
        let kernel: any KernelInterface
        do {
            kernel = try FeatureHidingKernel.hostKernel()
        } catch {
            fail("probe: \(FeatureHidingKernel.environmentVariable): \(error)", status: .usage)
        }
        let kvm: KVM, capabilities: HostCapabilities
        do {
            kvm = try KVM.open(using: kernel)
            capabilities = try kvm.capabilities()
        } catch {
            // Tier 0: nothing to boot on.
            if json {
                print("{\"tier\": \"\(KVMTier.t0.name)\", \"tier_summary\": \(jsonString(KVMTier.t0.summary)), "
                      + "\"error\": \(jsonString("\(error)")), \"booted\": false}")
            } else {
                print("tier                 \(KVMTier.t0)")
                print("missing              kvm: \(error)")
                print("                     costs: \(KVMFeature.kvm.costWhenMissing)")
            }
            fail("no guest can run here: \(error)")
        }
        let missing = explained.filter { entry in
            !capabilities.has(entry.feature) && entry.prerequisite.map(capabilities.has) ?? true
        }.map(\.feature)
        // The backing `run --ram auto` would pick; a plain guest always has one.
        guard case .success(let plan) = GuestRun.hostPlan(RunOptions(), capabilities: capabilities) else {
            fail("probe: no RAM backing for a plain guest")
        }
        let ram = plan.ram
        var output: Result<String, LaunchError>?
        if boot {
            output = Result { () throws(LaunchError) in try bootGuest(kvm, ram: ram) }
        }
        if json {
            print(jsonText(capabilities, missing: missing, ram: ram, output: output))
        } else {
            print(capabilities)
            print("tier                 \(capabilities.tier)")
            for feature in missing {
                print("missing              \(feature): \(capabilities.whyMissing(feature) ?? "")")
                print("                     costs: \(feature.costWhenMissing)")
            }
            if let output {
                let why = ram == .memfd ? " (no guest_memfd the host can map here)" : ""
                print("guest RAM            \(ram == .memfd ? "memfd mapped shared" : "guest_memfd, MMAP|INIT_SHARED")\(why)")
                if case .success(let text) = output { print("guest said           \(text.debugDescription)") }
            }
        }
        switch output {
        case nil: return .success
        case .success(let text)?:
            guard text == message(ram) else { fail("the guest's output differs from the message it was given") }
            return .success
        case .failure(let error)?:
            fail("booting the probe guest from \(ram.rawValue) memory: \(error)")
        }
    }

    /// The probe's findings as one JSON object.
    static func jsonText(_ capabilities: HostCapabilities, missing: [KVMFeature], ram: RAMBacking,
                         output: Result<String, LaunchError>?) -> String {
        var fields = [
            "\"tier\": \"\(capabilities.tier.name)\"",
            "\"tier_summary\": \(jsonString(capabilities.tier.summary))",
            "\"api_version\": \(capabilities.apiVersion)",
            "\"vm_types\": [\(capabilities.vmTypes.map { jsonString($0.name) }.joined(separator: ", "))]",
            "\"guest_memfd\": \(capabilities.guestMemfd)",
            "\"guest_memfd_flags\": \(capabilities.guestMemfdFlags.rawValue)",
            "\"user_memory2\": \(capabilities.userMemory2)",
            "\"memory_attributes\": \(capabilities.memoryAttributes.rawValue)",
            "\"memory_fault_info\": \(capabilities.memoryFaultInfo)",
            "\"pre_fault_memory\": \(capabilities.preFaultMemory)",
            "\"memslots\": \(capabilities.memslots)",
            "\"missing\": [" + missing.map {
                "{\"feature\": \"\($0.rawValue)\", \"reason\": \(jsonString(capabilities.whyMissing($0) ?? "")), "
                    + "\"cost\": \(jsonString($0.costWhenMissing))}"
            }.joined(separator: ", ") + "]",
        ]
        switch output {
        case nil:
            fields.append("\"booted\": false")
        case .success(let text)?:
            fields += ["\"booted\": \(text == message(ram))", "\"ram\": \"\(ram.rawValue)\"", "\"guest_output\": \(jsonString(text))"]
        case .failure(let error)?:
            fields += ["\"booted\": false", "\"ram\": \"\(ram.rawValue)\"", "\"error\": \(jsonString("\(error)"))"]
        }
        return "{" + fields.joined(separator: ", ") + "}"
    }

    /// Boots the guest from `ram` and returns what it wrote to the serial port.
    static func bootGuest(_ kvm: KVM, ram: RAMBacking) throws(LaunchError) -> String {
        let session = try LaunchSession(kvm: kvm, platform: .plain)
        let slot: GuestMemoryLayout.Slot
        do { slot = try session.vm.bindSmallRAM(ram, size: 0x10000) } catch { throw .kvm(error) }
        try session.addMemory(slot)
        let vcpu = try session.createVCPUs(1)[0]
        _ = try session.populate(LaunchPlan(regions: [
            PlanRegion(name: "code", range: GuestRange(start: codeAddress, size: pageSize), contents: .bytes(guestCode)),
            PlanRegion(name: "message", range: GuestRange(start: messageAddress, size: pageSize),
                       contents: .bytes(Array(message(ram).utf8) + [0])),
        ]))
        do { return try run(vcpu) } catch { throw .kvm(error) }
    }

    /// Runs the guest to its HLT, collecting what it writes to the serial port.
    private static func run(_ vcpu: VCPU) throws(KVMError) -> String {
        try vcpu.enterRealMode(at: codeAddress) { $0.rsi = messageAddress }

        var output: [UInt8] = []
        while true {
            switch try vcpu.run() {
            case .io(let io) where io.direction == .out && io.port == serialPort:
                output.append(contentsOf: io.written)
                guard output.count <= 4096 else { return String(decoding: output, as: UTF8.self) }
            case .hlt:
                return String(decoding: output, as: UTF8.self)
            case let exit:
                throw KVMError(.ioctl(.run), on: .vcpu, fd: vcpu.fd, errno: .ioError,
                               detail: "unexpected exit \(exit) after \(output.count) bytes of output")
            }
        }
    }
}
