import CKVMHeaders
import Foundation
import GuestMemfd
import LaunchMeasurement
import KVMFake
import Testing

/// One call sequence, run on the real kernel and on the fake's profile of
/// this project's hosts (with or without guest_memfd, as the host has it);
/// each produces a list of observations (values, errnos, memory digests)
/// that must be identical. On a host without guest_memfd, a case whose
/// setup needs one records the setup's errno and stops there, on both.
struct DifferentialCase: Sendable, CustomTestStringConvertible {
    let name: String
    let body: @Sendable (KVM, inout Observations) throws -> Void
    var testDescription: String { name }
}

/// What a case saw, one line per observation, with no descriptor numbers.
struct Observations {
    var lines: [String] = []

    /// Runs a step the rest of a case needs and records "ok" or its errno
    /// (never the value, which may hold descriptor numbers); nil when it failed.
    mutating func setup<T>(_ label: String, _ body: () throws -> T) -> T? {
        do {
            let value = try body()
            lines.append("\(label): ok")
            return value
        } catch {
            note(label) { throw error }
            return nil
        }
    }

    /// Records the value `body` returned, or the errno it failed with.
    mutating func note<T>(_ label: String, _ body: () throws -> T) {
        do {
            let value = try body()
            lines.append("\(label): \(value is Void ? "ok" : "\(value)")")
        } catch let error as KVMError {
            lines.append("\(label): \(error.errno.name)")
        } catch let error as Errno {
            lines.append("\(label): \(error.name)")
        } catch {
            lines.append("\(label): \(error)")
        }
    }
}

@Suite(.requiresKVM(.kvm))
struct DifferentialTests {
    @Test(arguments: DifferentialCase.all)
    func realKernelAndFakeAgree(_ testCase: DifferentialCase) throws {
        var real = Observations(), fake = Observations()
        try testCase.body(try KVMHost.open(), &real)
        try testCase.body(try KVM.open(using: FakeKVM(profile: KVMHost.matchingFakeProfile)), &fake)
        #expect(!real.lines.isEmpty)
        #expect(real.lines == fake.lines)
    }
}

private func memfd(_ vm: VM, _ size: UInt64 = 0x4000, _ flags: GuestMemfdFlags = [.mmap, .initShared]) throws -> GuestMemfd {
    try vm.createGuestMemfd(size: size, flags: flags)
}

private func slot(_ id: UInt32, _ gpa: UInt64, _ size: UInt64, _ memfd: GuestMemfd, offset: UInt64 = 0,
                  flags: UInt32 = UserMemoryRegion2.guestMemfdFlag) -> UserMemoryRegion2 {
    UserMemoryRegion2(slot: id, flags: flags, guestPhysicalAddress: gpa, memorySize: size, guestMemfdOffset: offset,
                      guestMemfd: UInt32(bitPattern: memfd.fd))
}

private func rawIoctl<T>(_ kvm: KVM, _ fd: CInt, _ ioctl: Ioctl, _ value: inout T) throws -> Int {
    try kvm.kernel.ioctl(fd, ioctl.request, pointerTo: &value)
}

extension DifferentialCase {
    static let all: [DifferentialCase] = [
        // System descriptor
        DifferentialCase(name: "API version and vCPU mmap size") { kvm, o in
            o.note("api") { try kvm.getAPIVersion() }
            o.note("mmap size") { try kvm.getVCPUMmapSize() }
            o.note("api with argument") { try kvm.kernel.ioctl(kvm.fd, Ioctl.getAPIVersion.request, 1) }
        },
        DifferentialCase(name: "capabilities on the system and VM descriptors") { kvm, o in
            let vm = try kvm.createVM()
            for cap: UInt in [3, 10, 66, 128, 201, 231, 232, 233, 234, 235, 236, 244, 245, 249, 250, 9999] {
                o.note("system cap \(cap)") { try kvm.kernel.ioctl(kvm.fd, Ioctl.checkExtension.request, cap) }
                o.note("vm cap \(cap)") { try kvm.kernel.ioctl(vm.fd, Ioctl.checkExtension.request, cap) }
            }
        },
        DifferentialCase(name: "typed capabilities") { kvm, o in
            o.note("capabilities") { try kvm.capabilities().description }
        },
        DifferentialCase(name: "VM types") { kvm, o in
            for type: UInt in 0...6 { o.note("type \(type)") { _ = try kvm.createVM(type: VMType(rawValue: type)) } }
        },
        DifferentialCase(name: "unknown ioctls per descriptor kind") { kvm, o in
            let vm = try kvm.createVM()
            let vcpu = try vm.createVCPU(id: 0)
            guard let gmem = o.setup("gmem", { try memfd(vm) }) else { return }
            let unknown: UInt = 0xAEFF
            o.note("system") { try kvm.kernel.ioctl(kvm.fd, unknown, 0) }
            o.note("vm") { try kvm.kernel.ioctl(vm.fd, unknown, 0) }
            o.note("vcpu") { try kvm.kernel.ioctl(vcpu.fd, unknown, 0) }
            o.note("guest_memfd") { try kvm.kernel.ioctl(gmem.fd, unknown, 0) }
        },
        DifferentialCase(name: "ioctls on the wrong descriptor") { kvm, o in
            let vm = try kvm.createVM()
            let vcpu = try vm.createVCPU(id: 0)
            o.note("create vCPU on system") { try kvm.kernel.ioctl(kvm.fd, Ioctl.createVCPU.request, 0) }
            o.note("create VM on VM") { try kvm.kernel.ioctl(vm.fd, Ioctl.createVM.request, 0) }
            o.note("check extension on vCPU") { try kvm.kernel.ioctl(vcpu.fd, Ioctl.checkExtension.request, 234) }
            o.note("API version on VM") { try kvm.kernel.ioctl(vm.fd, Ioctl.getAPIVersion.request, 0) }
            o.note("mmap size on VM") { try kvm.kernel.ioctl(vm.fd, Ioctl.getVCPUMmapSize.request, 0) }
            o.note("TSS on system") { try kvm.kernel.ioctl(kvm.fd, Ioctl.setTSSAddr.request, 0) }
            var request = ckvm_create_guest_memfd()
            request.size = 0x1000
            o.note("guest_memfd on system") { try rawIoctl(kvm, kvm.fd, .createGuestMemfd, &request) }
            var range = ckvm_pre_fault_memory()
            o.note("pre-fault on VM") { try rawIoctl(kvm, vm.fd, .preFaultMemory, &range) }
        },
        DifferentialCase(name: "vCPU ids") { kvm, o in
            let vm = try kvm.createVM()
            o.note("id 0") { _ = try vm.createVCPU(id: 0) }
            o.note("id 0 again") { _ = try vm.createVCPU(id: 0) }
            o.note("id 4095") { _ = try vm.createVCPU(id: 4095) }
            o.note("id 4096") { _ = try vm.createVCPU(id: 4096) }
            o.note("id 5000") { _ = try vm.createVCPU(id: 5000) }
        },
        DifferentialCase(name: "closing a descriptor twice") { kvm, o in
            let vm = try kvm.createVM()
            var request = ckvm_create_guest_memfd()
            request.size = 0x1000
            guard let fd = o.setup("guest_memfd", { CInt(try rawIoctl(kvm, vm.fd, .createGuestMemfd, &request)) }) else { return }
            o.note("first close") { try kvm.kernel.close(fd) }
            o.note("second close") { try kvm.kernel.close(fd) }
        },
        DifferentialCase(name: "supported CPUID needs room for its entries") { kvm, o in
            o.note("one entry") { _ = try kvm.getSupportedCPUID(capacity: 1) }
        },

        // guest_memfd creation
        DifferentialCase(name: "guest_memfd sizes") { kvm, o in
            let vm = try kvm.createVM()
            for size: UInt64 in [0, 1, 4095, 4096, 4097, 6144, 8192, UInt64(bitPattern: -4096), 1 << 40] {
                o.note("size \(size)") { _ = try vm.createGuestMemfd(size: size, flags: [.mmap]) }
            }
        },
        DifferentialCase(name: "guest_memfd flags") { kvm, o in
            let vm = try kvm.createVM()
            for bit in [0, 1, 2, 3, 4, 31, 32, 63] {
                o.note("bit \(bit)") { _ = try memfd(vm, 0x1000, GuestMemfdFlags(rawValue: 1 << UInt64(bit))) }
            }
            o.note("none") { _ = try memfd(vm, 0x1000, []) }
            o.note("MMAP|INIT_SHARED") { _ = try memfd(vm, 0x1000) }
            o.note("all three") { _ = try memfd(vm, 0x1000, [.mmap, .initShared, .noDirectMap]) }
        },
        DifferentialCase(name: "guest_memfd reserved words are not checked") { kvm, o in
            let vm = try kvm.createVM()
            var request = ckvm_create_guest_memfd()
            request.size = 0x1000
            request.reserved = (1, 2, 3, 4, 5, 6)
            o.note("reserved set") {
                let fd = CInt(try rawIoctl(kvm, vm.fd, .createGuestMemfd, &request))
                try kvm.kernel.close(fd)
            }
        },

        // mmap and host access
        DifferentialCase(name: "mapping rules") { kvm, o in
            let vm = try kvm.createVM()
            o.note("without MMAP") { _ = try memfd(vm, 0x2000, []).map() }
            o.note("INIT_SHARED alone") { _ = try memfd(vm, 0x2000, [.initShared]).map() }
            o.note("MAP_PRIVATE") { _ = try memfd(vm, 0x2000).map(shared: false) }
            o.note("MAP_SHARED") { _ = try memfd(vm, 0x2000).map() }
            o.note("longer than the file") { _ = try memfd(vm, 0x2000).map(length: 0x8000) }
        },
        DifferentialCase(name: "host writes read back and new pages read zero") { kvm, o in
            let vm = try kvm.createVM()
            guard let memory = o.setup("memory", { try memfd(vm, 0x8000).map() }) else { return }
            let pattern = (0..<10_000).map { UInt8(truncatingIfNeeded: $0 &* 31 &+ 7) }
            o.note("write") { try memory.write(pattern, at: 0x1800) }
            o.note("read back") { SHA384.hash(try memory.read(at: 0x1800, count: pattern.count)).hex.prefix(16) }
            o.note("untouched") { try memory.read(at: 0x6000, count: 0x2000).allSatisfy { $0 == 0 } }
        },
        DifferentialCase(name: "host access past the end of the file") { kvm, o in
            let vm = try kvm.createVM()
            guard let memory = o.setup("memory", { try memfd(vm, 0x2000).map(length: 0x4000) }) else { return }
            o.note("last byte") { try memory.write([1], at: 0x1FFF) }
            o.note("first byte past") { try memory.write([1], at: 0x2000) }
            o.note("straddling") { try memory.write([1, 2], at: 0x1FFF) }
            o.note("read past") { _ = try memory.read(at: 0x3000, count: 1) }
        },
        DifferentialCase(name: "host access to memory that starts private") { kvm, o in
            let vm = try kvm.createVM()
            guard let memory = o.setup("memory", { try memfd(vm, 0x2000, [.mmap]).map() }) else { return }
            o.note("write") { try memory.write([1], at: 0) }
            o.note("read") { _ = try memory.read(at: 0x1000, count: 4) }
            o.note("populate") { try memory.populateWrite(offset: 0, count: 0x2000) }
        },

        // fallocate
        DifferentialCase(name: "fallocate modes") { kvm, o in
            let vm = try kvm.createVM()
            guard let gmem = o.setup("gmem", { try memfd(vm, 0x4000) }) else { return }
            let keep = CKVM_FALLOC_FL_KEEP_SIZE, punch = CKVM_FALLOC_FL_PUNCH_HOLE
            for (label, mode) in [("0", CInt(0)), ("KEEP_SIZE", keep), ("PUNCH_HOLE", punch), ("KEEP|PUNCH", keep | punch),
                                  ("ZERO_RANGE", CKVM_FALLOC_FL_ZERO_RANGE), ("KEEP|ZERO_RANGE", keep | CKVM_FALLOC_FL_ZERO_RANGE),
                                  ("KEEP|0x8", keep | 0x8)] {
                o.note(label) { try gmem.fallocate(mode: mode, offset: 0, length: 0x1000) }
            }
        },
        DifferentialCase(name: "fallocate ranges") { kvm, o in
            let vm = try kvm.createVM()
            guard let gmem = o.setup("gmem", { try memfd(vm, 0x4000) }) else { return }
            for (offset, length): (UInt64, UInt64) in [(0, 0x4000), (0x1000, 0x4000), (0x4000, 0x1000), (0x800, 0x1000),
                                                        (0, 0x800), (0, 0), (0x8000, 0x1000)] {
                o.note("allocate \(offset)+\(length)") { try gmem.allocate(offset: offset, length: length) }
                o.note("punch \(offset)+\(length)") { try gmem.punchHole(offset: offset, length: length) }
            }
            o.note("negative offset") { try gmem.fallocate(mode: CKVM_FALLOC_FL_KEEP_SIZE, offset: UInt64(bitPattern: -4096), length: 0x1000) }
        },
        DifferentialCase(name: "punching a hole zeroes exactly its pages") { kvm, o in
            let vm = try kvm.createVM()
            guard let gmem = o.setup("gmem", { try memfd(vm, 0x6000) }) else { return }
            let memory = try gmem.map()
            try memory.fill(0xA5, at: 0, count: 0x6000)
            o.note("punch") { try gmem.punchHole(offset: 0x2000, length: 0x2000) }
            for page in 0..<6 {
                o.note("page \(page)") { Set(try memory.read(at: page * 0x1000, count: 0x1000)).sorted() }
            }
            o.note("write after punch") { try memory.write([7], at: 0x2000) }
            o.note("read after punch") { try memory.read(at: 0x2000, count: 2) }
        },

        // Memslots
        DifferentialCase(name: "binding a guest_memfd") { kvm, o in
            let vm = try kvm.createVM()
            guard let gmem = o.setup("gmem", { try memfd(vm, 0x8000) }) else { return }
            o.note("whole file") { try vm.setUserMemoryRegion2(slot(0, 0, 0x8000, gmem)) }
            o.note("delete") { try vm.setUserMemoryRegion2(slot(0, 0, 0, gmem)) }
            o.note("delete again") { try vm.setUserMemoryRegion2(slot(0, 0, 0, gmem)) }
            o.note("second half") { try vm.setUserMemoryRegion2(slot(1, 0x100000, 0x4000, gmem, offset: 0x4000)) }
            o.note("first half") { try vm.setUserMemoryRegion2(slot(2, 0x200000, 0x4000, gmem)) }
            o.note("overlapping file range") { try vm.setUserMemoryRegion2(slot(3, 0x300000, 0x2000, gmem, offset: 0x3000)) }
        },
        DifferentialCase(name: "binding past the end of the file") { kvm, o in
            let vm = try kvm.createVM()
            guard let gmem = o.setup("gmem", { try memfd(vm, 0x4000) }) else { return }
            o.note("offset + size past") { try vm.setUserMemoryRegion2(slot(0, 0, 0x4000, gmem, offset: 0x1000)) }
            o.note("size past") { try vm.setUserMemoryRegion2(slot(0, 0, 0x5000, gmem)) }
            o.note("offset at end") { try vm.setUserMemoryRegion2(slot(0, 0, 0x1000, gmem, offset: 0x4000)) }
            o.note("offset wraps") { try vm.setUserMemoryRegion2(slot(0, 0, 0x1000, gmem, offset: UInt64.max - 0xFFF)) }
            o.note("negative offset") { try vm.setUserMemoryRegion2(slot(0, 0, 0x1000, gmem, offset: 1 << 63)) }
        },
        DifferentialCase(name: "overlapping guest-physical ranges") { kvm, o in
            let vm = try kvm.createVM()
            guard let gmem = o.setup("gmem", { try memfd(vm, 0x10000) }) else { return }
            o.note("first") { try vm.setUserMemoryRegion2(slot(0, 0x10000, 0x4000, gmem)) }
            o.note("overlapping end") { try vm.setUserMemoryRegion2(slot(1, 0x13000, 0x4000, gmem, offset: 0x4000)) }
            o.note("overlapping start") { try vm.setUserMemoryRegion2(slot(1, 0xF000, 0x2000, gmem, offset: 0x4000)) }
            o.note("adjacent") { try vm.setUserMemoryRegion2(slot(1, 0x14000, 0x4000, gmem, offset: 0x4000)) }
            o.note("inside") { try vm.setUserMemoryRegion2(slot(2, 0x11000, 0x1000, gmem, offset: 0x8000)) }
        },
        DifferentialCase(name: "guest_memfd slots are immutable") { kvm, o in
            let vm = try kvm.createVM()
            guard let gmem = o.setup("gmem", { try memfd(vm, 0x8000) }) else { return }
            o.note("create") { try vm.setUserMemoryRegion2(slot(5, 0, 0x4000, gmem)) }
            o.note("same again") { try vm.setUserMemoryRegion2(slot(5, 0, 0x4000, gmem)) }
            o.note("move") { try vm.setUserMemoryRegion2(slot(5, 0x100000, 0x4000, gmem)) }
            o.note("as plain memory") { try vm.setUserMemoryRegion2(slot(5, 0, 0x4000, gmem, flags: 0)) }
        },
        DifferentialCase(name: "memslot flags") { kvm, o in
            let vm = try kvm.createVM()
            guard let gmem = o.setup("gmem", { try memfd(vm, 0x4000) }) else { return }
            for (label, flags): (String, UInt32) in [("LOG_DIRTY", 1), ("READONLY", 2), ("bit 3", 8), ("bit 31", 1 << 31)] {
                o.note("GUEST_MEMFD|\(label)") {
                    try vm.setUserMemoryRegion2(slot(0, 0, 0x4000, gmem, flags: UserMemoryRegion2.guestMemfdFlag | flags))
                }
            }
        },
        DifferentialCase(name: "memslot alignment and ids") { kvm, o in
            let vm = try kvm.createVM()
            guard let gmem = o.setup("gmem", { try memfd(vm, 0x4000) }) else { return }
            o.note("gpa 0x800") { try vm.setUserMemoryRegion2(slot(0, 0x800, 0x1000, gmem)) }
            o.note("size 0x1800") { try vm.setUserMemoryRegion2(slot(0, 0, 0x1800, gmem)) }
            o.note("offset 0x10") { try vm.setUserMemoryRegion2(slot(0, 0, 0x1000, gmem, offset: 0x10)) }
            o.note("slot 32764") { try vm.setUserMemoryRegion2(slot(32764, 0, 0x1000, gmem)) }
            o.note("slot 32763") { try vm.setUserMemoryRegion2(slot(32763, 0, 0x1000, gmem)) }
            o.note("address space 1") { try vm.setUserMemoryRegion2(slot(1 << 16 | 1, 0x100000, 0x1000, gmem, offset: 0x1000)) }
            o.note("address space 2") { try vm.setUserMemoryRegion2(slot(2 << 16, 0x200000, 0x1000, gmem, offset: 0x2000)) }
            o.note("gpa wraps") { try vm.setUserMemoryRegion2(slot(9, UInt64.max - 0xFFF, 0x2000, gmem)) }
        },
        DifferentialCase(name: "memslot userspace addresses") { kvm, o in
            let vm = try kvm.createVM()
            guard let gmem = o.setup("gmem", { try memfd(vm, 0x4000) }) else { return }
            for address: UInt64 in [0, 0x1000, 0x800, 0x7FFF_FFFF_F000, 0xFFFF_8000_0000_0000] {
                var region = slot(0, 0, 0x1000, gmem)
                region.userspaceAddress = address
                o.note("address \(address)") {
                    try vm.setUserMemoryRegion2(region)
                    region.memorySize = 0
                    try vm.setUserMemoryRegion2(region)
                }
            }
        },
        DifferentialCase(name: "memslot pads are not checked") { kvm, o in
            let vm = try kvm.createVM()
            guard let gmem = o.setup("gmem", { try memfd(vm, 0x4000) }) else { return }
            var region = slot(0, 0, 0x4000, gmem).cValue
            region.pad1 = 7
            region.pad2.0 = 9
            o.note("pads set") { try rawIoctl(kvm, vm.fd, .setUserMemoryRegion2, &region) }
        },
        DifferentialCase(name: "binding descriptors that are not guest_memfds") { kvm, o in
            let vm = try kvm.createVM()
            let other = try kvm.createVM()
            guard let foreign = o.setup("foreign", { try memfd(other) }) else { return }
            let vcpu = try vm.createVCPU(id: 0)
            for (label, fd) in [("not open", CInt(999)), ("negative", CInt(-1)), ("the VM", vm.fd), ("/dev/kvm", kvm.fd),
                                ("a vCPU", vcpu.fd), ("another VM's", foreign.fd)] {
                o.note(label) {
                    try vm.setUserMemoryRegion2(UserMemoryRegion2(slot: 0, flags: UserMemoryRegion2.guestMemfdFlag,
                                                                  guestPhysicalAddress: 0, memorySize: 0x1000,
                                                                  guestMemfd: UInt32(bitPattern: fd)))
                }
            }
        },
        DifferentialCase(name: "binding a closed guest_memfd") { kvm, o in
            let vm = try kvm.createVM()
            var request = ckvm_create_guest_memfd()
            request.size = 0x4000
            guard let fd = o.setup("guest_memfd", { CInt(try rawIoctl(kvm, vm.fd, .createGuestMemfd, &request)) }) else { return }
            try kvm.kernel.close(fd)
            o.note("bind") {
                try vm.setUserMemoryRegion2(UserMemoryRegion2(slot: 0, flags: UserMemoryRegion2.guestMemfdFlag,
                                                              guestPhysicalAddress: 0, memorySize: 0x1000,
                                                              guestMemfd: UInt32(bitPattern: fd)))
            }
        },
        DifferentialCase(name: "slots survive closing their guest_memfd") { kvm, o in
            let vm = try kvm.createVM()
            do {
                guard let gmem = o.setup("gmem", { try memfd(vm, 0x4000) }) else { return }
                try vm.setUserMemoryRegion2(slot(0, 0, 0x4000, gmem))
            }
            guard let gmem = o.setup("gmem", { try memfd(vm, 0x4000) }) else { return }
            o.note("rebind over") { try vm.setUserMemoryRegion2(slot(1, 0, 0x4000, gmem)) }
            o.note("delete old") { try vm.setUserMemoryRegion2(slot(0, 0, 0, gmem)) }
            o.note("rebind") { try vm.setUserMemoryRegion2(slot(1, 0, 0x4000, gmem)) }
        },
        DifferentialCase(name: "version 1 memslots") { kvm, o in
            let vm = try kvm.createVM()
            let memory = try SharedMemory(size: 0x4000)
            o.note("plain") {
                try vm.setUserMemoryRegion(slot: 0, guestPhysicalAddress: 0, memorySize: 0x4000,
                                           userspaceAddress: memory.userspaceAddress)
            }
            o.note("GUEST_MEMFD flag") {
                try vm.setUserMemoryRegion(slot: 1, flags: UserMemoryRegion2.guestMemfdFlag, guestPhysicalAddress: 0x10000,
                                           memorySize: 0x1000, userspaceAddress: memory.userspaceAddress)
            }
            o.note("overlap") {
                try vm.setUserMemoryRegion(slot: 2, guestPhysicalAddress: 0x2000, memorySize: 0x4000,
                                           userspaceAddress: memory.userspaceAddress)
            }
            o.note("move") {
                try vm.setUserMemoryRegion(slot: 0, guestPhysicalAddress: 0x40000, memorySize: 0x4000,
                                           userspaceAddress: memory.userspaceAddress)
            }
            o.note("read-only flag change") {
                try vm.setUserMemoryRegion(slot: 0, flags: UserMemoryRegion2.readOnly, guestPhysicalAddress: 0x40000,
                                           memorySize: 0x4000, userspaceAddress: memory.userspaceAddress)
            }
            o.note("dirty-log flag change") {
                try vm.setUserMemoryRegion(slot: 0, flags: UserMemoryRegion2.logDirtyPages, guestPhysicalAddress: 0x40000,
                                           memorySize: 0x4000, userspaceAddress: memory.userspaceAddress)
            }
        },

        // Attributes, pre-fault, encrypt ops
        DifferentialCase(name: "memory attributes") { kvm, o in
            let vm = try kvm.createVM()
            o.note("private") { try vm.setMemoryAttributes(GuestRange(start: 0, size: 0x1000), attributes: .private) }
            o.note("shared") { try vm.setMemoryAttributes(GuestRange(start: 0, size: 0x1000), attributes: []) }
            o.note("unaligned") { try vm.setMemoryAttributes(GuestRange(start: 0x10, size: 0x1000), attributes: []) }
        },
        DifferentialCase(name: "pre-fault memory") { kvm, o in
            let vm = try kvm.createVM()
            let memory = try SharedMemory(size: 0x4000)
            try vm.setUserMemoryRegion(slot: 0, guestPhysicalAddress: 0, memorySize: 0x4000, userspaceAddress: memory.userspaceAddress)
            let vcpu = try vm.createVCPU(id: 0)
            for (gpa, size): (UInt64, UInt64) in [(0, 0x4000), (0x800, 0x1000), (0, 0x800), (0, 0), (0x100000, 0x1000),
                                                    (UInt64.max - 0xFFF, 0x2000)] {
                o.note("range \(gpa)+\(size)") { try vcpu.preFaultMemory(GuestRange(start: gpa, size: size)) }
            }
            var range = ckvm_pre_fault_memory(gpa: 0, size: 0x1000, flags: 1, padding: (0, 0, 0, 0, 0))
            o.note("flags") { try rawIoctl(kvm, vcpu.fd, .preFaultMemory, &range) }
            range.flags = 0
            o.note("written back") {
                _ = try? rawIoctl(kvm, vcpu.fd, .preFaultMemory, &range)
                return "\(range.gpa) \(range.size)"
            }
        },
        DifferentialCase(name: "encrypt op without a confidential platform") { kvm, o in
            let vm = try kvm.createVM()
            let vcpu = try vm.createVCPU(id: 0)
            o.note("null on system") { try kvm.kernel.ioctl(kvm.fd, Ioctl.memoryEncryptOp.request, 0) }
            o.note("null on VM") { try kvm.kernel.ioctl(vm.fd, Ioctl.memoryEncryptOp.request, 0) }
            o.note("null on vCPU") { try kvm.kernel.ioctl(vcpu.fd, Ioctl.memoryEncryptOp.request, 0) }
            o.note("TDX finalize") { try TDX(vm: vm).finalizeVM() }
            o.note("/dev/sev") { _ = try SEVSNP(vm: vm) }
            o.note("CCA populate") { _ = try CCA(vm: vm).populate(CCAPopulate(base: 0, size: 0x1000, sourceAddress: 0x1000), measure: true) }
        },
        DifferentialCase(name: "in-kernel devices") { kvm, o in
            let vm = try kvm.createVM()
            o.note("IRQ line without irqchip") { try vm.irqLine(4, level: true) }
            o.note("irqchip") { try vm.createIRQChip() }
            o.note("irqchip again") { try vm.createIRQChip() }
            o.note("IRQ line") { try vm.irqLine(4, level: true) }
            o.note("PIT") { try vm.createPIT2() }
            o.note("PIT again") { try vm.createPIT2() }
            o.note("TSS") { try vm.setTSSAddr(0xFFFB_D000) }
            o.note("identity map") { try vm.setIdentityMapAddr(0xFFFB_C000) }
        },
        DifferentialCase(name: "enabling exit on hypercall") { kvm, o in
            let vm = try kvm.createVM()
            o.note("MAP_GPA_RANGE") { try vm.enableCap(.exitHypercall, arguments: [1 << 12]) }
            o.note("other hypercall") { try vm.enableCap(.exitHypercall, arguments: [1]) }
        },
        DifferentialCase(name: "registers round-trip") { kvm, o in
            let vm = try kvm.createVM()
            let vcpu = try vm.createVCPU(id: 0)
            o.note("reset rip") { try vcpu.getRegs().rip }
            o.note("reset cs") { let s = try vcpu.getSregs(); return "\(s.cs.selector) \(s.cs.base)" }
            var regs = kvm_regs()
            regs.rip = 0x1234
            regs.rax = 0xDEAD_BEEF
            regs.rflags = 0x2
            o.note("set") { try vcpu.setRegs(regs) }
            o.note("get") { let r = try vcpu.getRegs(); return "\(r.rip) \(r.rax) \(r.rflags)" }
            var sregs = try vcpu.getSregs()
            sregs.cs.base = 0
            sregs.cs.selector = 0
            o.note("set sregs") { try vcpu.setSregs(sregs) }
            o.note("get sregs") { let s = try vcpu.getSregs(); return "\(s.cs.selector) \(s.cs.base)" }
        },
    ]
}
