import Fixtures
import Foundation
import GuestMemfd
import Populate
import VMMCore
import Synchronization
import Testing

/// Guests booted for real on this host's KVM, from guest_memfd memory where
/// the host can map it and from memfd RAM otherwise, as `snpvmm run` picks.
@Suite(.requiresKVM(.kvm), .serialized)
struct RealBootTests {
    let kvm: KVM

    init() throws {
        kvm = try KVMHost.open()
    }

    /// The backing `--ram auto` picks on this host.
    static var ram: RAMBacking { KVMHost.has(.mmap) ? .guestMemfd : .memfd }

    /// Every backing this host offers a plain guest.
    static var backings: [RAMBacking] { KVMHost.has(.mmap) ? [.guestMemfd, .memfd] : [.memfd] }

    final class Console: Sendable {
        private let bytes = Mutex<[UInt8]>([])
        func write(_ data: [UInt8]) { bytes.withLock { $0 += data } }
        var text: String { String(decoding: bytes.withLock { $0 }, as: UTF8.self) }
    }

    /// Loads and boots `kernel`, returning what the guest printed and how the run ended.
    func boot(_ kernel: ImageSource, initrd: [UInt8]? = nil, commandLine: String = "", memory: UInt64 = 256 << 20,
              cpus: Int = 1, ram: RAMBacking = RealBootTests.ram) throws -> (output: String, end: RunEnd) {
        let setup = try Loader.load(BootRequest(kernel: kernel, initrd: initrd.map { ImageSource(bytes: $0) },
                                                commandLine: commandLine, memorySize: memory, cpus: cpus))
        var options = RunOptions()
        options.memory = memory
        options.cpus = cpus
        let console = Console()
        let end = try GuestRun.boot(setup, options: options, ram: ram, kvm: kvm, output: { console.write($0) })
        return (console.text, end)
    }

    static func hex(_ value: UInt32) -> String { String(String(value, radix: 16).leftPadded(to: 8)) }

    /// What pvh-check prints for a 256 MiB guest given `payload` as its module.
    static func pvhCheckOutput(commandLine: String, payload: [UInt8], memoryMap: [String]) -> String {
        let module = Fixtures.pvhCheckModule(payload)
        let moduleAddress = UInt32((256 << 20) - ((module.count + 4095) / 4096) * 4096)
        return """
            pvh-check: started
            pvh-check: bss zero ok
            pvh-check: data hash ok
            pvh-check: start_info 0x00006000 version 0x00000001
            pvh-check: cpu ok
            pvh-check: cmdline "\(commandLine)"
            pvh-check: memmap 0x\(hex(UInt32(memoryMap.count))) entries
            \(memoryMap.map { "pvh-check:   " + $0 }.joined(separator: "\n"))
            pvh-check: memmap ok
            pvh-check: module 0x\(hex(moduleAddress)) size 0x\(hex(UInt32(module.count)))
            pvh-check: module hash 0x\(hex(Fixtures.checksum(payload))) ok
            pvh-check: PASS

            """
    }

    static let map256M = [
        "0x0000000000000000 size 0x000000000009fc00 type 0x00000001",
        "0x000000000009fc00 size 0x0000000000000400 type 0x00000002",
        "0x0000000000100000 size 0x000000000ff00000 type 0x00000001",
    ]

    @Test(arguments: RealBootTests.backings)
    func pvhGuestSeesItsInitrdAndCommandLine(_ ram: RAMBacking) throws {
        let payload = (0..<3000).map { UInt8(truncatingIfNeeded: $0 &* 13 &+ 5) }
        let result = try boot(ImageSource(path: Fixtures.pvhCheckPath, role: "kernel"),
                              initrd: Fixtures.pvhCheckModule(payload), commandLine: "console=ttyS0 pvh-check", ram: ram)
        #expect(result.output == Self.pvhCheckOutput(commandLine: "console=ttyS0 pvh-check", payload: payload,
                                                     memoryMap: Self.map256M))
        #expect(result.end == .debugExit(value: Fixtures.pvhCheckPassed))
    }

    @Test func pvhGuestWithMoreThanThreeGiBFindsTheRestAboveFourGiB() throws {
        let result = try boot(ImageSource(path: Fixtures.pvhCheckPath, role: "kernel"),
                              initrd: Fixtures.pvhCheckModule([1, 2, 3]), memory: 5 << 30)
        #expect(result.output.contains("""
            pvh-check:   0x0000000000100000 size 0x00000000bff00000 type 0x00000001
            pvh-check:   0x0000000100000000 size 0x0000000080000000 type 0x00000001
            """))
        #expect(result.output.hasSuffix("pvh-check: PASS\n"))
        #expect(result.end == .debugExit(value: Fixtures.pvhCheckPassed))
    }

    @Test func pvhGuestWithoutModuleReportsTheFailedCheck() throws {
        let result = try boot(ImageSource(path: Fixtures.pvhCheckPath, role: "kernel"))
        #expect(result.output.hasSuffix("pvh-check: FAIL module\npvh-check: FAIL\n"))
        #expect(result.end == .debugExit(value: Fixtures.pvhCheckFailed))
    }

    @Test(arguments: [1, 4])
    func bootCPURunsWhileApplicationProcessorsWaitForStartup(_ cpus: Int) throws {
        let result = try boot(ImageSource(path: Fixtures.pvhCheckPath, role: "kernel"),
                              initrd: Fixtures.pvhCheckModule([9]), cpus: cpus)
        #expect(result.end == .debugExit(value: Fixtures.pvhCheckPassed))
    }

    /// `mov $0x3f8, %dx; mov $'h', %al; out %al, %dx; cli; hlt`
    static let printThenHalt: [UInt8] = [0x66, 0xBA, 0xF8, 0x03, 0xB0, 0x68, 0xEE, 0xFA, 0xF4]

    @Test(arguments: [1, 3])
    func guestHaltedWithInterruptsOffEndsTheRun(_ cpus: Int) throws {
        let result = try boot(ImageSource(bytes: ELFBuilder.pvh(Self.printThenHalt).build()), cpus: cpus)
        #expect(result.output == "h")
        #expect(result.end == .haltedWithInterruptsOff)
    }

    @Test func tripleFaultEndsTheRun() throws {
        // ud2 with no IDT: #UD, then #GP, then a double fault, then shutdown.
        let result = try boot(ImageSource(bytes: ELFBuilder.pvh([0x0F, 0x0B]).build()))
        #expect(result.end == .tripleFault)
    }

    @Test func i8042ResetEndsTheRun() throws {
        // mov $0xfe, %al; out %al, $0x64; hlt
        let result = try boot(ImageSource(bytes: ELFBuilder.pvh([0xB0, 0xFE, 0xE6, 0x64, 0xF4]).build()))
        #expect(result.end == .i8042Reset)
    }

    @Test func portsWithoutADeviceReadAllOnes() throws {
        // in $0x80, %al; out %al, $0xf4  (reports the byte read)
        let result = try boot(ImageSource(bytes: ELFBuilder.pvh([0xE4, 0x80, 0xE6, 0xF4]).build()))
        #expect(result.end == .debugExit(value: 0xFF))
    }

    /// A bzImage whose 64-bit entry (load address + 0x200) prints the
    /// command line boot_params points to and exits with 0x2a:
    /// `mov 0x228(%rsi), %esi; mov $0x3f8, %dx; 1: lodsb; test %al, %al;
    /// jz 2f; out %al, %dx; jmp 1b; 2: mov $0x2a, %al; out %al, $0xf4; hlt`.
    @Test func bzImageEntersLongModeWithBootParamsInRSI() throws {
        var kernel = [UInt8](repeating: 0xF4, count: 0x200)
        kernel += [0x8B, 0xB6, 0x28, 0x02, 0x00, 0x00, 0x66, 0xBA, 0xF8, 0x03, 0xAC, 0x84, 0xC0, 0x74, 0x03, 0xEE,
                   0xEB, 0xF8, 0xB0, 0x2A, 0xE6, 0xF4, 0xF4]
        var builder = BzImageBuilder()
        builder.kernel = kernel
        let result = try boot(ImageSource(bytes: builder.build()), commandLine: "console=ttyS0 from boot_params")
        #expect(result.output == "console=ttyS0 from boot_params")
        #expect(result.end == .debugExit(value: 0x2A))
    }

    // MARK: Plain population

    @Test(arguments: RealBootTests.backings)
    func plainPopulateWritesContentsThenZerosOverDirtyMemory(_ ram: RAMBacking) throws {
        let machine = try Machine(kvm: kvm, ram: ram, memorySize: 4 << 20, cpus: 1, output: { _ in })
        try machine.hostMemory!.fill(0xAA, at: 0, count: 4 << 20)
        let directory = try TemporaryDirectory()
        let file = try directory.write("image", Array(0..<200).map { UInt8($0) })
        let plan = LaunchPlan(regions: [
            PlanRegion(name: "bytes", range: GuestRange(start: 0x1000, size: 0x2000), contents: .bytes([1, 2, 3])),
            PlanRegion(name: "file", range: GuestRange(start: 0x10_0000, size: 0x1000),
                       contents: .file(path: file, offset: 100, length: 50)),
            PlanRegion(name: "zeros", range: GuestRange(start: 0x20_0000, size: 0x1000), contents: .zeros, kind: .zero),
        ])
        try machine.populatePlain(plan)
        #expect(try machine.hostMemory!.read(at: 0x1000, count: 4) == [1, 2, 3, 0])
        #expect(try machine.hostMemory!.read(at: 0x2FFF, count: 2) == [0, 0xAA])
        #expect(try machine.hostMemory!.read(at: 0x10_0000, count: 51) == Array(100..<150).map { UInt8($0) } + [0])
        #expect(try machine.hostMemory!.read(at: 0x20_0000, count: 0x1000) == [UInt8](repeating: 0, count: 0x1000))
        #expect(try machine.hostMemory!.read(at: 0xFFF, count: 1) == [0xAA])
    }

    @Test func plainPopulateRejectsAnInvalidPlanBeforeWritingAnything() throws {
        let machine = try Machine(kvm: kvm, ram: Self.ram, memorySize: 4 << 20, cpus: 1, output: { _ in })
        let plan = LaunchPlan(regions: [
            PlanRegion(name: "first", range: GuestRange(start: 0x1000, size: 0x1000), contents: .bytes([7])),
            PlanRegion(name: "beyond", range: GuestRange(start: 0x40_0000, size: 0x1000), contents: .bytes([8])),
        ])
        #expect(throws: PopulateFailure.self) { try machine.populatePlain(plan) }
        #expect(try machine.hostMemory!.read(at: 0x1000, count: 1) == [0])
    }
}
