import GuestMemfd

/// `snpvmm probe`: reports the host's KVM capabilities, then runs a 12-byte
/// real-mode guest whose code and message live in guest_memfd memory and
/// which prints the message on the serial port.
enum ProbeCommand {
    static let summary = """
        probe [--no-boot]   show what this host's KVM offers for guest_memfd and
                            confidential guests, then boot a tiny guest from
                            guest_memfd memory to prove the path works
        """

    /// The guest: `mov $0x3f8, %dx; 1: lodsb; test %al, %al; jz 2f; out %al, %dx; jmp 1b; 2: hlt`.
    static let guestCode: [UInt8] = [0xBA, 0xF8, 0x03, 0xAC, 0x84, 0xC0, 0x74, 0x03, 0xEE, 0xEB, 0xF8, 0xF4]
    static let message = "hello from guest_memfd\n"
    static let codeAddress: UInt64 = 0x1000
    static let messageAddress: UInt64 = 0x2000
    static let serialPort: UInt16 = 0x3F8

    static func run(_ arguments: [String]) -> ExitCode {
        var boot = true
        for argument in arguments {
            switch argument {
            case "--no-boot": boot = false
            default: fail("probe: unknown option '\(argument)'", status: .usage)
            }
        }
        do {
            let kvm = try KVM.open()
            let capabilities = try kvm.capabilities()
            print(capabilities)
            let missing = capabilities.missing([.guestMemfd, .userMemory2, .guestMemfdFlags])
            guard missing.isEmpty else {
                fail("this host lacks \(missing.joined(separator: ", ")); guest_memfd-backed guests need Linux 6.18+")
            }
            guard capabilities.guestMemfdFlags.isSuperset(of: [.mmap, .initShared]) else {
                fail("guest_memfd here cannot be mapped shared (flags \(capabilities.guestMemfdFlags)); need MMAP|INIT_SHARED")
            }
            if boot {
                let output = try bootGuest(kvm)
                print("guest said           \(output.debugDescription)")
                guard output == message else { fail("the guest's output differs from the message it was given") }
            }
            return .success
        } catch {
            fail("\(error)")
        }
    }

    /// Boots the guest and returns what it wrote to the serial port.
    static func bootGuest(_ kvm: KVM) throws(KVMError) -> String {
        let vm = try kvm.createVM()
        let memfd = try vm.createGuestMemfd(size: 0x10000, flags: [.mmap, .initShared])
        let memory = try memfd.map()
        try memory.write(guestCode, at: Int(codeAddress))
        try memory.write(Array(message.utf8) + [0], at: Int(messageAddress))
        try vm.setUserMemoryRegion2(UserMemoryRegion2(slot: 0, guestPhysicalAddress: 0, mapping: memory))

        let vcpu = try vm.createVCPU(id: 0)
        try vcpu.enterRealMode(at: codeAddress) { $0.rsi = messageAddress }

        var output: [UInt8] = []
        while true {
            switch try vcpu.run() {
            case .io(let io) where io.direction == .out && io.port == serialPort:
                output.append(contentsOf: io.data)
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
