import CKVMHeaders
import GuestMemfd
import LaunchMeasurement
import Populate

/// An SEV-SNP launch of an IGVM file as QEMU's IGVM loader makes it: the
/// launch updates of `IGVMSNPLaunch` as a plan, each parameter area filled
/// where it is inserted (the vCPU count, a memory map of guest RAM, the
/// command line, the environment info), and the boot vCPU's state decoded
/// from the file's VMSA so that KVM builds that VMSA again at LAUNCH_FINISH.
public struct IGVMLaunch: Sendable {
    public let file: IGVMFile
    public let launch: IGVMSNPLaunch
    public let memorySize: UInt64
    public let vcpus: Int
    public let commandLine: String

    public init(file: IGVMFile, nativeZero: Bool, memorySize: UInt64, vcpus: Int = 1, commandLine: String = "") throws(IGVMError) {
        self.file = file
        self.launch = try IGVMSNPLaunch(file, nativeZero: nativeZero, checkKVM: true)
        self.memorySize = memorySize
        self.vcpus = vcpus
        self.commandLine = commandLine
    }

    /// The launch plan, in the order QEMU queues the updates.
    public func plan() -> LaunchPlan {
        let areas = parameterAreas()
        let regions = launch.updates.map { update -> PlanRegion in
            let range = GuestRange(start: update.gpa, size: update.pages * 4096)
            let name = "IGVM header \(update.header) \(update.type)"
            let kind: PageKind = switch update.type {
            case .normal: .normal
            case .zero: .zero
            case .unmeasured: .unmeasured
            case .secrets: .secrets
            default: .cpuid
            }
            if let area = update.parameterArea, let bytes = areas[area] {
                return PlanRegion(name: name, range: range, contents: .bytes(bytes), kind: kind)
            }
            return PlanRegion(name: name, range: range, contents: update.contents.map { .bytes($0) } ?? .zeros, kind: kind)
        }
        return LaunchPlan(regions: regions)
    }

    /// Each parameter area's bytes as the loader fills them (QEMU's
    /// `backends/igvm.c`): VP_COUNT the vCPU count (u32), MEMORY_MAP one
    /// 24-byte entry per run of RAM (first page, page count, type 0 memory),
    /// ENVIRONMENT_INFO bit 0 (memory is shared until accepted); COMMAND_LINE
    /// the command line, NUL-terminated, which QEMU does not fill. Other
    /// usages stay zero. Each is written at its byte offset.
    public func parameterAreas() -> [UInt32: [UInt8]] {
        var areas: [UInt32: [UInt8]] = [:]
        func write(_ bytes: [UInt8], area: UInt32, at offset: UInt32) {
            guard var buffer = areas[area] else { return }
            let start = Int(offset), end = min(buffer.count, start + bytes.count)
            if start < end { buffer.replaceSubrange(start..<end, with: bytes[0..<(end - start)]) }
            areas[area] = buffer
        }
        func le<T: FixedWidthInteger>(_ value: T) -> [UInt8] { withUnsafeBytes(of: value.littleEndian) { Array($0) } }
        for (_, directive) in file.directives {
            switch directive {
            case let .parameterArea(size, area, _):
                areas[area] = [UInt8](repeating: 0, count: Int(size))
            case let .parameterUsage(type, area, offset):
                switch type {
                case .vpCount: write(le(UInt32(vcpus)), area: area, at: offset)
                case .memoryMap: write(le(UInt64(0)) + le(memorySize / 4096) + le(UInt16(0)) + le(UInt16(0)) + le(UInt32(0)), area: area, at: offset)
                case .environmentInfo: write(le(UInt32(1)), area: area, at: offset)
                case .commandLine: write(Array(commandLine.utf8) + [0], area: area, at: offset)
                default: break
                }
            default:
                break
            }
        }
        return areas
    }

    /// The boot vCPU's registers, segments and SEV features, decoded from the
    /// file's VMSA; throws when KVM could not build that VMSA from vCPU state.
    public typealias BootState = (regs: kvm_regs, sregs: kvm_sregs, sevFeatures: UInt64)

    public func bootState() throws(IGVMError) -> BootState? {
        guard let vmsa = launch.vmsas.first else { return nil }
        let state = SNPVMSA.vcpuState(of: vmsa.page)
        if let offset = state.firstDifference {
            throw IGVMError(header: vmsa.header, type: .vpContext,
                            "the VMSA holds state KVM does not set from a vCPU's registers (first at save-area offset 0x\(String(offset, radix: 16))), so the launch would measure another VMSA")
        }
        return (state.regs, state.sregs, state.sevFeatures)
    }
}
