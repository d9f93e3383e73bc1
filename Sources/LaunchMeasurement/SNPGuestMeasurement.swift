/// The launch measurement of an SEV-SNP guest booted from OVMF, computed the
/// way sev-snp-measure 0.0.13 computes it (`guest.py`
/// `snp_calc_launch_digest`; `snp-launch-digest.md` §3), so that the two
/// agree bit for bit and fail on the same inputs.
///
/// The order of measurement, for the default QEMU VMM type:
/// 1. every page of the firmware image as NORMAL, from its load address;
/// 2. the SEV metadata sections in table order (not sorted by GPA);
/// 3. one VMSA per vCPU: the BSP's, then the same AP VMSA for the others.
///
/// `launchSteps(for:)` gives steps 1 and 2 as launch updates, and
/// `vmsaPages(for:)` step 3, so a VMM can issue exactly what is measured.
public struct SNPGuestMeasurement: Sendable {
    public var vcpus: Int
    /// CPUID Fn0000_0001_EAX for the VMSAs (see `SNPVCPUSignature`).
    public var vcpuSignature: UInt64
    public var vmmType: SNPVMMType
    /// SEV_FEATURES of every VMSA; sev-snp-measure's default is 0x1 (SNPActive).
    public var guestFeatures: UInt64
    /// The kernel-hashes table for measured direct boot, or nil.
    public var kernelHashes: SEVKernelHashes?
    /// A firmware digest computed earlier (`--snp-ovmf-hash`): the chain
    /// starts from it and the image's pages are not measured again.
    public var firmwareDigest: SHA384Digest?

    public init(vcpus: Int, vcpuSignature: UInt64, vmmType: SNPVMMType = .qemu, guestFeatures: UInt64 = 0x1,
                kernelHashes: SEVKernelHashes? = nil, firmwareDigest: SHA384Digest? = nil) {
        self.vcpus = vcpus
        self.vcpuSignature = vcpuSignature
        self.vmmType = vmmType
        self.guestFeatures = guestFeatures
        self.kernelHashes = kernelHashes
        self.firmwareDigest = firmwareDigest
    }

    /// The digest of the firmware pages alone (`--mode snp:ovmf-hash`).
    public static func firmwareDigest(of image: OVMFImage) throws(SNPMeasurementError) -> SHA384Digest {
        try checkFirmwareSize(image)
        var digest = SNPLaunchDigest()
        do { try digest.addNormalPages(gpa: image.loadAddress, contents: image.bytes) } catch {
            throw .firmwareNotWholePages(size: image.bytes.count)
        }
        return digest.value
    }

    /// The launch updates before the VMSAs, in measurement order: the
    /// firmware range (unless `firmwareDigest` is set), then the metadata
    /// sections as this VMM type measures them.
    public func launchSteps(for image: OVMFImage) throws(SNPMeasurementError) -> [SNPLaunchStep] {
        var steps = [SNPLaunchStep]()
        if firmwareDigest == nil {
            try Self.checkFirmwareSize(image)
            steps.append(SNPLaunchStep(gpa: image.loadAddress, pageCount: UInt64(image.bytes.count / 4096),
                                       type: .normal, source: .firmware(offset: 0)))
        }
        let sections = image.sevMetadata ?? []
        let metadataPages = sections.reduce(UInt64(0)) { $0 + UInt64($1.size) / 4096 }
        guard metadataPages <= Self.maximumMetadataPages else {
            throw .metadataTooLarge(pages: metadataPages, sections: sections.count)
        }
        for (index, section) in sections.enumerated() {
            func pages(_ type: SNPPageType) throws(SNPMeasurementError) -> SNPLaunchStep {
                guard section.size % 4096 == 0 else { throw .sectionNotWholePages(index: index, section: section) }
                return SNPLaunchStep(gpa: UInt64(section.gpa), pageCount: UInt64(section.size / 4096), type: type, source: .none)
            }
            switch section.type {
            case .snpSecMem:
                steps.append(try pages(vmmType == .gce ? .unmeasured : .zero))
            case .snpSecrets:
                steps.append(SNPLaunchStep(gpa: UInt64(section.gpa), pageCount: 1, type: .secrets, source: .none))
            case .cpuid:
                // EC2 measures the CPUID pages after every other section.
                if vmmType != .ec2 {
                    steps.append(SNPLaunchStep(gpa: UInt64(section.gpa), pageCount: 1, type: .cpuid, source: .none))
                }
            case .snpKernelHashes:
                if let kernelHashes {
                    guard let tableGPA = image.sevHashTableGPA else { throw .missingHashTableEntry }
                    let offset = Int(tableGPA & 0xFFF)
                    guard let page = kernelHashes.page(tableOffset: offset) else { throw .hashTableDoesNotFit(offset: offset) }
                    guard section.size == 4096 else { throw .kernelHashesSectionSize(index: index, section: section) }
                    steps.append(SNPLaunchStep(gpa: UInt64(section.gpa), pageCount: 1, type: .normal, source: .bytes(page)))
                } else {
                    steps.append(try pages(.zero))
                }
            case .svsmCAA:
                steps.append(try pages(.zero))
            default:
                throw .unknownSectionType(index: index, section: section)
            }
        }
        if vmmType == .ec2 {
            for section in sections where section.type == .cpuid {
                steps.append(SNPLaunchStep(gpa: UInt64(section.gpa), pageCount: 1, type: .cpuid, source: .none))
            }
        }
        if kernelHashes != nil, !sections.contains(where: { $0.type == .snpKernelHashes }) {
            throw .noKernelHashesSection
        }
        return steps
    }

    /// The VMSA of each vCPU in index order.
    public func vmsaPages(for image: OVMFImage) throws(SNPMeasurementError) -> [[UInt8]] {
        guard vcpus <= Self.maximumVCPUs else { throw .tooManyVCPUs(vcpus) }
        guard let apEIP = image.sevESResetEIP else { throw .missingResetBlock }
        guard vcpus > 0 else { return [] }
        let bsp = SNPInitialVMSA.page(eip: SNPInitialVMSA.bspEIP, sevFeatures: guestFeatures, vcpuSignature: vcpuSignature, vmmType: vmmType)
        guard vcpus > 1 else { return [bsp] }
        guard apEIP != 0 else { throw .noAPResetAddress(vcpus: vcpus) }
        let ap = SNPInitialVMSA.page(eip: apEIP, sevFeatures: guestFeatures, vcpuSignature: vcpuSignature, vmmType: vmmType)
        return [bsp] + Array(repeating: ap, count: vcpus - 1)
    }

    /// The launch digest: the MEASUREMENT the guest's attestation report will carry.
    public func launchDigest(for image: OVMFImage) throws(SNPMeasurementError) -> SHA384Digest {
        let steps = try launchSteps(for: image)
        let vmsas = try vmsaPages(for: image)
        var digest = SNPLaunchDigest(start: firmwareDigest ?? .zero)
        do {
            for step in steps {
                try step.measure(into: &digest, image: image)
            }
            for vmsa in vmsas { try digest.addVMSA(vmsa) }
        } catch {
            // The steps above are whole pages by construction.
            throw .firmwareNotWholePages(size: image.bytes.count)
        }
        return digest.value
    }

    /// The most pages the SEV metadata sections may ask to be measured, in
    /// all: 4 GiB, the whole 32-bit space the firmware runs in. Real images
    /// ask for a few hundred KiB; the bound keeps a damaged image (thousands
    /// of 4 GiB sections) from making the measurement run for hours, one
    /// SHA-384 per page.
    public static let maximumMetadataPages: UInt64 = 1 << 20

    /// The most vCPUs a guest can have: the largest `KVM_MAX_VCPUS` x86 KVM
    /// can be built with (CONFIG_KVM_MAX_NR_VCPUS). Each vCPU adds a VMSA.
    public static let maximumVCPUs = 4096

    static func checkFirmwareSize(_ image: OVMFImage) throws(SNPMeasurementError) {
        guard UInt64(image.bytes.count) <= OVMFImage.end else { throw .firmwareTooLarge(size: image.bytes.count) }
        guard image.bytes.count % 4096 == 0 else { throw .firmwareNotWholePages(size: image.bytes.count) }
    }
}

/// One launch update of an SNP launch: `pageCount` pages of one type from
/// `gpa`, with where their bytes come from.
public struct SNPLaunchStep: Equatable, Sendable {
    public enum Source: Equatable, Sendable {
        /// The firmware image, from this byte offset.
        case firmware(offset: Int)
        /// These bytes (`pageCount` pages of them).
        case bytes([UInt8])
        /// Nothing: the page type carries no contents.
        case none
    }

    public var gpa: UInt64
    public var pageCount: UInt64
    public var type: SNPPageType
    public var source: Source

    public init(gpa: UInt64, pageCount: UInt64, type: SNPPageType, source: Source) {
        self.gpa = gpa
        self.pageCount = pageCount
        self.type = type
        self.source = source
    }

    /// Folds this step's pages into `digest`.
    public func measure(into digest: inout SNPLaunchDigest, image: OVMFImage) throws(SNPLaunchDigestError) {
        switch source {
        case .none:
            digest.addPages(gpa: gpa, count: pageCount, type: type)
        case .bytes(let bytes):
            try digest.addNormalPages(gpa: gpa, contents: bytes)
        case .firmware(let offset):
            let (length, overflow) = Int(clamping: pageCount).multipliedReportingOverflow(by: 4096)
            guard !overflow, offset >= 0, offset <= image.bytes.count, length <= image.bytes.count - offset else {
                throw .outsideFirmwareImage(offset: offset, pageCount: pageCount, imageSize: image.bytes.count)
            }
            try image.bytes.withUnsafeBytes { raw in
                Result { () throws(SNPLaunchDigestError) in
                    try digest.addNormalPages(gpa: gpa, contents: UnsafeRawBufferPointer(rebasing: raw[offset..<(offset + length)]))
                }
            }.get()
        }
    }
}

/// Why an SNP launch measurement cannot be computed for an image. The
/// descriptions start with sev-snp-measure's own message where it has one.
public enum SNPMeasurementError: Error, Equatable, Sendable, CustomStringConvertible {
    case firmwareNotWholePages(size: Int)
    case firmwareTooLarge(size: Int)
    case unknownSectionType(index: Int, section: SEVMetadataSection)
    case sectionNotWholePages(index: Int, section: SEVMetadataSection)
    case missingHashTableEntry
    case hashTableDoesNotFit(offset: Int)
    case kernelHashesSectionSize(index: Int, section: SEVMetadataSection)
    case noKernelHashesSection
    case missingResetBlock
    case noAPResetAddress(vcpus: Int)
    case metadataTooLarge(pages: UInt64, sections: Int)
    case tooManyVCPUs(Int)
    /// A launch (not a measurement: sev-snp-measure measures such an image) needs the SEV metadata.
    case noSEVMetadata

    public var description: String {
        func describe(_ index: Int, _ section: SEVMetadataSection) -> String {
            "SEV metadata section \(index) (\(section.type), GPA 0x\(String(section.gpa, radix: 16)), size 0x\(String(section.size, radix: 16)))"
        }
        switch self {
        case .firmwareNotWholePages(let size):
            return "OVMF image size \(size) is not a multiple of 4096 bytes, so it cannot be measured page by page"
        case .firmwareTooLarge(let size):
            return "OVMF image of \(size) bytes is larger than 4 GiB and cannot end at 4 GiB"
        case .unknownSectionType(let index, let section):
            return "unknown OVMF metadata section type \(section.type.rawValue) in \(describe(index, section))"
        case .sectionNotWholePages(let index, let section):
            return "\(describe(index, section)) is not a whole number of 4096-byte pages"
        case .missingHashTableEntry:
            return "Can't find SEV_HASH_TABLE_RV_GUID entry in OVMF table"
        case .hashTableDoesNotFit(let offset):
            return "the kernel-hashes table at page offset 0x\(String(offset, radix: 16)) does not fit in its 4096-byte page"
        case .kernelHashesSectionSize(let index, let section):
            return "\(describe(index, section)) must be exactly 4096 bytes to hold the kernel-hashes page"
        case .noKernelHashesSection:
            return "Kernel specified but OVMF metadata doesn't include SNP_KERNEL_HASHES section"
        case .missingResetBlock:
            return "Can't find SEV_ES_RESET_BLOCK_GUID entry in OVMF table"
        case .metadataTooLarge(let pages, let sections):
            return "the \(sections) SEV metadata sections ask for \(pages) pages (0x\(String(pages * 4096, radix: 16)) bytes) to be measured; at most 4 GiB is accepted"
        case .tooManyVCPUs(let vcpus):
            return "\(vcpus) vCPUs is more than the \(SNPGuestMeasurement.maximumVCPUs) a KVM guest can have"
        case .noSEVMetadata:
            return "the image has no SEV metadata (no OVMF_SEV_META_DATA entry in its footer table), so it names no CPUID "
                + "or secrets page; an SEV-SNP launch needs them, and QEMU refuses such an image too"
        case .noAPResetAddress(let vcpus):
            return "the OVMF SEV_ES_RESET_BLOCK gives AP reset address 0, so no AP VMSA exists for \(vcpus) vCPUs"
        }
    }
}
