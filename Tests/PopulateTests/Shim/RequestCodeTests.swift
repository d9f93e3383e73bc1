import CKVMHeaders
import Foundation
import GuestMemfd
import Testing

/// The request codes of every ioctl the package issues, decoded field by
/// field, against the table of `../shared/reference/kvm-uapi.md` section 0.1.
@Suite struct RequestCodeTests {
    struct Row: CustomTestStringConvertible, Sendable {
        let ioctl: Ioctl
        let direction: UInt  // 0 none, 1 write, 2 read, 3 read/write
        let size: UInt
        let nr: UInt
        let value: UInt
        var testDescription: String { ioctl.rawValue }
    }

    /// Transcribed from the reference table (and, for ioctls it does not
    /// list, from the kernel's header: sizes of kvm_regs 144, kvm_sregs 312, kvm_mp_state 4,
    /// kvm_pit_config 64, kvm_irq_level 8, u64 8).
    static let table: [Row] = [
        Row(ioctl: .getAPIVersion, direction: 0, size: 0, nr: 0x00, value: 0x0000_AE00),
        Row(ioctl: .createVM, direction: 0, size: 0, nr: 0x01, value: 0x0000_AE01),
        Row(ioctl: .checkExtension, direction: 0, size: 0, nr: 0x03, value: 0x0000_AE03),
        Row(ioctl: .getVCPUMmapSize, direction: 0, size: 0, nr: 0x04, value: 0x0000_AE04),
        Row(ioctl: .getSupportedCPUID, direction: 3, size: 8, nr: 0x05, value: 0xC008_AE05),
        Row(ioctl: .createVCPU, direction: 0, size: 0, nr: 0x41, value: 0x0000_AE41),
        Row(ioctl: .setNrMMUPages, direction: 0, size: 0, nr: 0x44, value: 0x0000_AE44),
        Row(ioctl: .setUserMemoryRegion, direction: 1, size: 32, nr: 0x46, value: 0x4020_AE46),
        Row(ioctl: .setTSSAddr, direction: 0, size: 0, nr: 0x47, value: 0x0000_AE47),
        Row(ioctl: .setIdentityMapAddr, direction: 1, size: 8, nr: 0x48, value: 0x4008_AE48),
        Row(ioctl: .setUserMemoryRegion2, direction: 1, size: 160, nr: 0x49, value: 0x40A0_AE49),
        Row(ioctl: .createIRQChip, direction: 0, size: 0, nr: 0x60, value: 0x0000_AE60),
        Row(ioctl: .irqLine, direction: 1, size: 8, nr: 0x61, value: 0x4008_AE61),
        Row(ioctl: .createPIT2, direction: 1, size: 64, nr: 0x77, value: 0x4040_AE77),
        Row(ioctl: .run, direction: 0, size: 0, nr: 0x80, value: 0x0000_AE80),
        Row(ioctl: .getRegs, direction: 2, size: 144, nr: 0x81, value: 0x8090_AE81),
        Row(ioctl: .setRegs, direction: 1, size: 144, nr: 0x82, value: 0x4090_AE82),
        Row(ioctl: .getSregs, direction: 2, size: 312, nr: 0x83, value: 0x8138_AE83),
        Row(ioctl: .setSregs, direction: 1, size: 312, nr: 0x84, value: 0x4138_AE84),
        Row(ioctl: .setCPUID2, direction: 1, size: 8, nr: 0x90, value: 0x4008_AE90),
        Row(ioctl: .getMPState, direction: 2, size: 4, nr: 0x98, value: 0x8004_AE98),
        Row(ioctl: .enableCap, direction: 1, size: 104, nr: 0xA3, value: 0x4068_AEA3),
        Row(ioctl: .memoryEncryptOp, direction: 3, size: 8, nr: 0xBA, value: 0xC008_AEBA),
        Row(ioctl: .memoryEncryptRegRegion, direction: 2, size: 16, nr: 0xBB, value: 0x8010_AEBB),
        Row(ioctl: .memoryEncryptUnregRegion, direction: 2, size: 16, nr: 0xBC, value: 0x8010_AEBC),
        Row(ioctl: .setMemoryAttributes, direction: 1, size: 32, nr: 0xD2, value: 0x4020_AED2),
        Row(ioctl: .createGuestMemfd, direction: 3, size: 64, nr: 0xD4, value: 0xC040_AED4),
        Row(ioctl: .preFaultMemory, direction: 3, size: 64, nr: 0xD5, value: 0xC040_AED5),
        Row(ioctl: .setMemoryAttributes2, direction: 3, size: 128, nr: 0xD2, value: 0xC080_AED2),
        Row(ioctl: .setMemoryAttributes2RFC, direction: 3, size: 64, nr: 0xD6, value: 0xC040_AED6),
        Row(ioctl: .armRMIPopulateV12, direction: 1, size: 32, nr: 0xD7, value: 0x4020_AED7),
        Row(ioctl: .armRMIPopulate, direction: 3, size: 32, nr: 0xD7, value: 0xC020_AED7),
        Row(ioctl: .setDeviceAttr, direction: 1, size: 24, nr: 0xE1, value: 0x4018_AEE1),
        Row(ioctl: .getDeviceAttr, direction: 1, size: 24, nr: 0xE2, value: 0x4018_AEE2),
        Row(ioctl: .hasDeviceAttr, direction: 1, size: 24, nr: 0xE3, value: 0x4018_AEE3),
    ]

    @Test func everyIoctlHasARow() {
        #expect(Set(Self.table.map(\.ioctl)) == Set(Ioctl.allCases))
    }

    @Test(arguments: table)
    func requestCodeDecodesToTheReferenceFields(_ row: Row) {
        let code = row.ioctl.request
        #expect(code == row.value, "\(row.ioctl.rawValue) is 0x\(String(code, radix: 16))")
        #expect(code >> 30 == row.direction, "direction")
        #expect((code >> 16) & 0x3FFF == row.size, "argument size")
        #expect((code >> 8) & 0xFF == 0xAE, "type KVMIO")
        #expect(code & 0xFF == row.nr, "number")
        #expect(Ioctl(request: code) == row.ioctl)
    }

    /// Reads section 0.1 of the reference beside the repository and checks
    /// that every ioctl it lists has a pinned code here, with the same value.
    @Test(.enabled(if: FileManager.default.fileExists(atPath: RequestCodeTests.referencePath),
                   "the uAPI reference is not beside this checkout (../shared/reference/kvm-uapi.md)"))
    func transcribedTableAgreesWithTheReferenceDocument() throws {
        let text = try String(contentsOfFile: Self.referencePath, encoding: .utf8)
        var checked = 0
        for line in text.split(separator: "\n") where line.hasPrefix("| KVM_") {
            let cells = line.split(separator: "|").map { $0.trimmingCharacters(in: .whitespaces) }
            guard cells.count >= 6, let valueCell = cells.first(where: { $0.hasPrefix("0x") && $0.count == 10 }),
                  let value = UInt(valueCell.dropFirst(2), radix: 16)
            else { continue }
            var name = String(cells[0].split(separator: " ")[0])
            if cells[0].contains("v12") { name += "(v12)" }
            // The reference lists the series' RFC v1 form; its v8 moved to nr 0xd2.
            if name == "KVM_SET_MEMORY_ATTRIBUTES2" { name += "(RFC v1)" }
            guard let row = Self.table.first(where: { $0.ioctl.rawValue == name }) else {
                Issue.record("the reference lists \(name) (\(valueCell)) but the package has no pinned code for it")
                continue
            }
            #expect(row.value == value, "\(name): reference says \(valueCell)")
            checked += 1
        }
        #expect(checked >= 20, "only \(checked) reference rows were read; has the table's format changed?")
    }

    static let referencePath = repositoryRoot.deletingLastPathComponent()
        .appendingPathComponent("shared/reference/kvm-uapi.md").path

    @Test func structSizesMatchTheKernelLayouts() {
        #expect(MemoryLayout<ckvm_create_guest_memfd>.size == 64)
        #expect(MemoryLayout<ckvm_userspace_memory_region2>.size == 160)
        #expect(MemoryLayout<ckvm_memory_attributes>.size == 32)
        #expect(MemoryLayout<ckvm_pre_fault_memory>.size == 64)
        #expect(MemoryLayout<ckvm_sev_cmd>.size == 24)
        #expect(MemoryLayout<ckvm_sev_init>.size == 48)
        #expect(MemoryLayout<ckvm_sev_snp_launch_start>.size == 64)
        #expect(MemoryLayout<ckvm_sev_snp_launch_update>.size == 64)
        #expect(MemoryLayout<ckvm_sev_snp_launch_finish>.size == 88)
        #expect(MemoryLayout<ckvm_tdx_cmd>.size == 24)
        #expect(MemoryLayout<ckvm_tdx_init_vm>.size == 264)
        #expect(MemoryLayout<ckvm_tdx_init_mem_region>.size == 24)
        #expect(MemoryLayout<ckvm_arm_rmi_populate>.size == 32)
        #expect(MemoryLayout<kvm_run>.offset(of: \.exit_reason) == 8)
    }

    @Test func encryptSubcommandIdsMatchTheKernelEnums() {
        let ids = Dictionary(uniqueKeysWithValues: EncryptCommand.allCases.map { ($0, $0.id) })
        #expect(ids == [.sevInit2: 22, .snpLaunchStart: 100, .snpLaunchUpdate: 101, .snpLaunchFinish: 102,
                        .tdxCapabilities: 0, .tdxInitVM: 1, .tdxInitVCPU: 2, .tdxInitMemRegion: 3, .tdxFinalizeVM: 4])
    }

    @Test func capabilityNumbersMatchTheKernel() {
        let numbers = Dictionary(uniqueKeysWithValues: Capability.allCases.map { ($0.name, $0.rawValue) })
        #expect(numbers == ["KVM_CAP_GUEST_MEMFD_MEMORY_ATTRIBUTES": 250, "KVM_CAP_NR_MEMSLOTS": 10, "KVM_CAP_EXIT_HYPERCALL": 201, "KVM_CAP_USER_MEMORY2": 231,
                            "KVM_CAP_MEMORY_FAULT_INFO": 232, "KVM_CAP_MEMORY_ATTRIBUTES": 233,
                            "KVM_CAP_GUEST_MEMFD": 234, "KVM_CAP_VM_TYPES": 235, "KVM_CAP_PRE_FAULT_MEMORY": 236,
                            "KVM_CAP_GUEST_MEMFD_FLAGS": 244, "KVM_CAP_ARM_RMI": 249])
    }
}
