import CKVMHeaders
import GuestMemfd
import LaunchMeasurement
import Populate

/// An SEV-SNP launch from OVMF as QEMU makes it for `-bios`: the launch
/// plan (the firmware image as NORMAL pages ending at 4 GiB, then each SEV
/// metadata section with QEMU's page type, the kernel-hashes page where the
/// firmware has one) and each vCPU's reset state (the boot vCPU at the
/// reset vector, the others at the firmware's SEV-ES reset block), which
/// KVM measures into the VMSAs at LAUNCH_FINISH. The plan is built from the
/// same steps `SNPGuestMeasurement` measures, so a launch of it measures
/// what `snpvmm measure` predicts.
public struct SNPFirmwareLaunch: Sendable {
    public let image: OVMFImage
    public let measurement: SNPGuestMeasurement

    public init(image: OVMFImage, measurement: SNPGuestMeasurement) {
        self.image = image
        self.measurement = measurement
    }

    /// The guest-physical range the firmware occupies, below 4 GiB.
    public var firmwareRange: GuestRange { GuestRange(start: image.loadAddress, size: UInt64(image.bytes.count)) }

    /// The plan, in measurement order. An image without SEV metadata is
    /// refused, as QEMU's sev_snp_launch_finish refuses it: the guest would
    /// have no CPUID or secrets page.
    public func plan() throws(SNPMeasurementError) -> LaunchPlan {
        let steps = try measurement.launchSteps(for: image)
        guard image.sevMetadata != nil else { throw .noSEVMetadata }
        var regions: [PlanRegion] = []
        for (index, step) in steps.enumerated() {
            let range = GuestRange(start: step.gpa, size: step.pageCount * pageSize)
            let contents: RegionContents = switch step.source {
            case .firmware(let offset): .bytes(Array(image.bytes[offset..<(offset + Int(range.size))]))
            case .bytes(let bytes): .bytes(bytes)
            case .none: .zeros
            }
            let kind: PageKind = switch step.type {
            case .zero: .zero
            case .unmeasured: .unmeasured
            case .secrets: .secrets
            case .cpuid: .cpuid
            default: .normal
            }
            let name = index == 0 && step.gpa == image.loadAddress ? "firmware" : "SEV metadata \(step.type) at \(range.start)"
            regions.append(PlanRegion(name: name, range: range, contents: contents, kind: kind))
        }
        return LaunchPlan(regions: regions)
    }

    /// The reset state of vCPU `index` as QEMU sets it for an SEV-ES or SNP
    /// guest (x86_cpu_reset, sev_es_set_reset_vector): real mode, CS
    /// selector 0xf000 with the base and IP from the reset address, data
    /// segments flat 64 KiB, CR0 at its reset value, and EDX holding the
    /// CPUID signature.
    public func resetState(vcpu index: Int) throws(SNPMeasurementError) -> (kvm_regs, kvm_sregs) {
        var eip = SNPInitialVMSA.bspEIP
        if index > 0 {
            guard let ap = image.sevESResetEIP, ap != 0 else { throw .noAPResetAddress(vcpus: index + 1) }
            eip = ap
        }
        return Self.resetState(eip: eip, vcpuSignature: measurement.vcpuSignature)
    }

    /// The x86 reset state at `eip` with `vcpuSignature` in EDX.
    public static func resetState(eip: UInt32, vcpuSignature: UInt64) -> (kvm_regs, kvm_sregs) {
        func segment(selector: UInt16 = 0, base: UInt64 = 0, type: UInt8, code: Bool = false, system: Bool = false) -> kvm_segment {
            var segment = kvm_segment()
            segment.selector = selector
            segment.base = base
            segment.limit = 0xFFFF
            segment.type = type
            segment.s = system ? 0 : 1
            segment.present = 1
            return segment
        }
        var sregs = kvm_sregs()
        sregs.cs = segment(selector: 0xF000, base: UInt64(eip & 0xFFFF_0000), type: 0xB, code: true)
        (sregs.ds, sregs.es, sregs.fs, sregs.gs, sregs.ss) = (segment(type: 3), segment(type: 3), segment(type: 3),
                                                             segment(type: 3), segment(type: 3))
        sregs.ldt = segment(type: 2, system: true)
        sregs.tr = segment(type: 0xB, system: true)
        sregs.gdt.limit = 0xFFFF
        sregs.idt.limit = 0xFFFF
        sregs.cr0 = 0x6000_0010  // CD, NW and ET: the reset value
        var regs = kvm_regs()
        regs.rflags = 0x2
        regs.rip = UInt64(eip & 0xFFFF)
        regs.rdx = vcpuSignature
        return (regs, sregs)
    }
}
