import GuestMemfd
import LaunchMeasurement
import Populate

/// A TDX launch from TDVF as QEMU makes it (`target/i386/kvm/tdx.c`,
/// `hw/i386/tdvf.c`, `tdvf-hob.c`): each TDVF metadata section that is not
/// PAGE.AUG, in metadata order, added with KVM_TDX_INIT_MEM_REGION:
/// BFV and CFV from the image (measured where the section has MR.EXTEND),
/// TD_HOB holding the hand-off block list that describes guest RAM, and
/// TEMP_MEM as zeros. Every vCPU starts with the TD_HOB's address in RCX
/// (KVM_TDX_INIT_VCPU). MRTD depends only on the sections, so a launch of
/// this plan measures what `TDVFImage.mrtd` (`snpvmm measure --mode tdx`)
/// predicts.
public struct TDXFirmwareLaunch: Sendable {
    public let image: TDVFImage
    /// Guest RAM from 0; TEMP_MEM and TD_HOB must lie inside it.
    public let memorySize: UInt64

    public init(image: TDVFImage, memorySize: UInt64) {
        self.image = image
        self.memorySize = memorySize
    }

    /// The image's guest-physical range: it ends at 4 GiB, as QEMU maps `-bios`.
    public var firmwareRange: GuestRange {
        GuestRange(start: (1 << 32) - UInt64(image.bytes.count), size: UInt64(image.bytes.count))
    }

    /// The sections added before the TD runs, in metadata order.
    var addedSections: [TDVFSection] { image.sections.filter { !$0.isPageAug } }

    /// The TD_HOB section's address: RCX of every vCPU at its first entry.
    public func handOffAddress() throws(TDXFirmwareLaunchError) -> UInt64 {
        guard let hob = addedSections.first(where: { $0.type == .tdHOB }) else { throw .noHandOffSection }
        return hob.memoryAddress
    }

    /// The plan, in the order KVM_TDX_INIT_MEM_REGION adds it.
    public func plan() throws(TDXFirmwareLaunchError) -> LaunchPlan {
        let hobAddress = try handOffAddress()
        var regions: [PlanRegion] = []
        for (index, section) in addedSections.enumerated() {
            let range = GuestRange(start: section.memoryAddress, size: section.memoryDataSize)
            let name = "TDVF section \(index) \(section.type) at \(range.start)"
            switch section.type {
            case .bfv, .cfv:
                let end = range.start.rawValue + range.size
                guard (range.start.rawValue >= firmwareRange.start.rawValue && end <= 1 << 32) || end <= memorySize else {
                    throw .outsideMemory(section: index, range: range, memorySize: memorySize)
                }
                let start = Int(section.dataOffset)
                regions.append(PlanRegion(name: name, range: range,
                                          contents: .bytes(Array(image.bytes[start..<(start + Int(section.memoryDataSize))])),
                                          kind: section.isExtended ? .normal : .unmeasured))
            default:
                guard range.start.rawValue + range.size <= memorySize else {
                    throw .outsideMemory(section: index, range: range, memorySize: memorySize)
                }
                if section.type == .tdHOB {
                    let list = handOffBlocks(at: hobAddress)
                    guard UInt64(list.count) <= section.memoryDataSize else { throw .handOffListTooLarge(bytes: list.count, section: range) }
                    regions.append(PlanRegion(name: name, range: range, contents: .bytes(list), kind: .unmeasured))
                } else if section.isExtended {
                    regions.append(PlanRegion(name: name, range: range,
                                              contents: .bytes([UInt8](repeating: 0, count: Int(section.memoryDataSize))), kind: .normal))
                } else {
                    regions.append(PlanRegion(name: name, range: range, contents: .zeros, kind: .zero))
                }
            }
        }
        return LaunchPlan(regions: regions)
    }

    /// The hand-off block list QEMU writes into TD_HOB (UEFI PI spec vol. 3,
    /// HOBs): a PHIT header, one resource descriptor per run of guest RAM
    /// (system memory where a section was added before the TD runs,
    /// unaccepted memory elsewhere, as TDVF's design guide names them), and
    /// the end-of-list HOB.
    public func handOffBlocks(at address: UInt64) -> [UInt8] {
        let ranges = ramRanges()
        let phitLength = 56, resourceLength = 48, endLength = 8
        var list = LittleEndianWriter(count: phitLength + resourceLength * ranges.count + endLength)
        func header(type: UInt16, length: Int, at offset: Int) {
            list.store(type, at: offset)
            list.store(UInt16(length), at: offset + 2)
        }
        // PHIT (EFI_HOB_TYPE_HANDOFF): version 9, boot mode 0 (full configuration), the memory
        // fields 0, and EfiEndOfHobList the address of the end HOB.
        header(type: 0x0001, length: phitLength, at: 0)
        list.store(UInt32(0x0009), at: 8)
        let endOffset = phitLength + resourceLength * ranges.count
        list.store(address + UInt64(endOffset), at: 48)
        for (index, (range, accepted)) in ranges.enumerated() {
            // EFI_HOB_TYPE_RESOURCE_DESCRIPTOR: owner GUID zero; type system memory (0) or unaccepted (7);
            // attributes present | initialized | tested.
            let offset = phitLength + resourceLength * index
            header(type: 0x0003, length: resourceLength, at: offset)
            list.store(UInt32(accepted ? 0 : 7), at: offset + 24)
            list.store(UInt32(0x7), at: offset + 28)
            list.store(range.start.rawValue, at: offset + 32)
            list.store(range.size, at: offset + 40)
        }
        header(type: 0xFFFF, length: endLength, at: endOffset)
        return list.bytes
    }

    /// Guest RAM (`Layout.ramRanges`: below the device hole, the rest from
    /// 4 GiB) split at the sections added inside it, in address order: the
    /// sections' ranges merged, and the gaps between them unaccepted.
    func ramRanges() -> [(GuestRange, accepted: Bool)] {
        let added = addedSections.filter { $0.type == .tdHOB || $0.type == .tempMem }
            .map { ($0.memoryAddress, $0.memoryAddress + $0.memoryDataSize) }
            .sorted { $0.0 < $1.0 }
        var merged: [(start: UInt64, end: UInt64)] = []
        for (start, end) in added {
            if let last = merged.last, start <= last.end { merged[merged.count - 1].end = max(last.end, end) } else { merged.append((start, end)) }
        }
        var ranges: [(GuestRange, accepted: Bool)] = []
        for ram in Layout.ramRanges(memorySize: memorySize) {
            let ramEnd = ram.start + ram.size
            var cursor = ram.start
            for run in merged where run.start >= ram.start && run.end <= ramEnd {
                if run.start > cursor { ranges.append((GuestRange(start: cursor, size: run.start - cursor), false)) }
                ranges.append((GuestRange(start: run.start, size: run.end - run.start), true))
                cursor = run.end
            }
            if cursor < ramEnd { ranges.append((GuestRange(start: cursor, size: ramEnd - cursor), false)) }
        }
        return ranges
    }
}

/// Why a TDVF image cannot be launched.
public enum TDXFirmwareLaunchError: Error, Equatable, Sendable, CustomStringConvertible {
    /// No TD_HOB section: the vCPUs would have no hand-off list to start from.
    case noHandOffSection
    case outsideMemory(section: Int, range: GuestRange, memorySize: UInt64)
    case handOffListTooLarge(bytes: Int, section: GuestRange)

    public var description: String {
        switch self {
        case .noHandOffSection:
            "the TDVF metadata has no TD_HOB section, so no hand-off block list can tell the firmware where RAM is"
        case let .outsideMemory(section, range, memorySize):
            "TDVF section \(section) at \(range) lies outside the \(memorySize >> 20) MiB of guest RAM; give more --memory"
        case let .handOffListTooLarge(bytes, section):
            "the \(bytes)-byte hand-off block list does not fit the TD_HOB section \(section)"
        }
    }
}
