/// The SEV-SNP launch of an IGVM file: its directives for the SNP platform
/// as launch updates, in the order QEMU's IGVM loader (`backends/igvm.c`)
/// queues them, and the launch digest they give.
///
/// - PAGE_DATA: one page, or 512 with the 2 MiB flag (file data fills the
///   first 4 KiB, zeros the rest). NORMAL with the unmeasured flag is
///   UNMEASURED; NORMAL without data is a NORMAL page of zeros (as QEMU and
///   igvmmeasure measure it), or ZERO with `nativeZero`; SECRETS is
///   SECRETS; CPUID_DATA and CPUID_XF are CPUID. QEMU holds a run of
///   consecutive PAGE_DATA headers (same flags, type, mask, data or none,
///   adjacent GPAs) and queues it when a page breaks the run or the file
///   ends, so directives between runs are queued first.
/// - PARAMETER_INSERT: every page of the parameter area, UNMEASURED, at
///   once (igvmmeasure measures one page; they agree for one-page areas).
/// - VP_CONTEXT: the VMSA, which KVM measures at LAUNCH_FINISH after every
///   page, at 0xFFFFFFFFF000.
public struct IGVMSNPLaunch: Sendable {
    /// One launch update: `pages` pages from `gpa`; `contents` holds their
    /// bytes for NORMAL pages (nil for the types measured without them).
    public struct Update: Sendable, Equatable {
        public var gpa: UInt64
        public var pages: UInt64
        public var type: SNPPageType
        public var contents: [UInt8]?
        /// The header the update comes from.
        public var header: Int
        /// The parameter area a PARAMETER_INSERT places.
        public var parameterArea: UInt32? = nil
    }

    public let updates: [Update]
    /// The VMSA pages KVM measures at LAUNCH_FINISH, each with its header.
    /// Without KVM's rules they are updates in file order instead, and this is empty.
    public let vmsas: [(header: Int, page: [UInt8])]
    /// GUEST_POLICY for the SNP platform, if given.
    public let policy: UInt64?
    /// The launch digest SNP_ID_BLOCK names, if the file has one.
    public let idBlockDigest: [UInt8]?

    /// - Parameters:
    ///   - nativeZero: measure pages without data as ZERO pages (igvmmeasure's `--native-zero`).
    ///   - checkKVM: refuse what KVM cannot launch: more than one VMSA, a VMSA
    ///     elsewhere than 0xFFFFFFFFF000, a CR0 KVM would change, or anything
    ///     measured after the VMSA in the file.
    public init(_ file: IGVMFile, nativeZero: Bool = false, checkKVM: Bool = true) throws(IGVMError) {
        guard let mask = file.snpMask else { throw IGVMError("the file declares no SEV_SNP platform (SUPPORTED_PLATFORM type 2)") }
        var updates: [Update] = [], vmsas: [(Int, [UInt8])] = [], policy: UInt64?, idBlock: [UInt8]?
        var areas: [UInt32: UInt64] = [:]
        // The run of PAGE_DATA QEMU holds: its first header, flags and pages.
        var held: (header: Int, last: Int, key: [UInt64], gpa: UInt64, next: UInt64, pages: [(UInt64, [UInt8]?)], type: SNPPageType)?
        func flush() {
            guard let run = held else { return }
            let hasData = run.pages.contains { $0.1 != nil }
            let type: SNPPageType = run.type == .normal && !hasData && nativeZero ? .zero : run.type
            var contents: [UInt8]?
            if type == .normal { contents = run.pages.flatMap { $0.1 ?? [UInt8](repeating: 0, count: 4096) } }
            updates.append(Update(gpa: run.gpa, pages: UInt64(run.pages.count), type: type, contents: contents, header: run.header))
            held = nil
        }
        for (index, directive) in file.directives {
            guard directive.compatibilityMask.map({ $0 & mask != 0 }) ?? true else { continue }
            if let vmsa = vmsas.first, checkKVM, Self.measures(directive) {
                if case .vpContext = directive {
                    throw IGVMError(header: index, type: .vpContext, "a second VMSA (the first is header \(vmsa.0)); KVM measures one VMSA per vCPU from its own state, so an IGVM launch has one (--no-check-kvm to measure anyway)")
                }
                throw IGVMError(header: index, type: IGVMFile.headerType(of: directive),
                                "comes after the VMSA of header \(vmsa.0); KVM measures VMSAs at LAUNCH_FINISH, after every page (--no-check-kvm measures in file order)")
            }
            switch directive {
            case let .pageData(gpa, _, fileOffset, large, unmeasured, _, dataType):
                let type: SNPPageType = switch dataType {
                case .normal: unmeasured ? .unmeasured : .normal
                case .secrets: .secrets
                case .cpuidData, .cpuidXF: .cpuid
                }
                let count = large ? 512 : 1
                var pages: [(UInt64, [UInt8]?)] = [(gpa, fileOffset == 0 ? nil : file.page(at: fileOffset))]
                for page in 1..<count { pages.append((gpa + UInt64(page) * 4096, fileOffset == 0 ? nil : [UInt8](repeating: 0, count: 4096))) }
                let key: [UInt64] = [large ? 1 : 0, unmeasured ? 1 : 0, UInt64(dataType.rawValue), fileOffset == 0 ? 0 : 1]
                if let run = held, run.key == key, run.next == gpa, run.last + 1 == index {
                    held!.pages += pages
                    held!.last = index
                    held!.next = gpa + UInt64(count) * 4096
                } else {
                    flush()
                    held = (index, index, key, gpa, gpa + UInt64(count) * 4096, pages, type)
                }
            case let .parameterArea(size, area, _):
                areas[area] = size
            case let .parameterInsert(gpa, _, area):
                updates.append(Update(gpa: gpa, pages: areas[area]! / 4096, type: .unmeasured, contents: nil, header: index,
                                      parameterArea: area))
            case let .vpContext(gpa, _, fileOffset, _):
                let page = file.page(at: fileOffset)
                if checkKVM {
                    guard gpa == SNPLaunchDigest.vmsaGPA else {
                        throw IGVMError(header: index, type: .vpContext, "gpa 0x\(String(gpa, radix: 16)) is not 0xfffffffff000, where KVM measures the VMSA (--no-check-kvm to measure anyway)")
                    }
                    let cr0 = page.loadLE(UInt64.self, at: Self.cr0Offset)
                    if let problem = Self.cr0Problem(cr0) {
                        throw IGVMError(header: index, type: .vpContext, "VMSA CR0 0x\(String(cr0, radix: 16)) \(problem) (--no-check-kvm to measure anyway)")
                    }
                }
                if checkKVM { vmsas.append((index, page)) } else {
                    // Without KVM's rules the VMSA is measured where the file puts it, as igvmmeasure does.
                    flush()
                    updates.append(Update(gpa: gpa, pages: 1, type: .vmsa, contents: page, header: index))
                }
            case let .guestPolicy(value, _):
                policy = value
            case let .snpIDBlock(_, body):
                idBlock = Array(body[8..<56])
            default:
                break
            }
        }
        flush()
        self.updates = updates
        self.vmsas = vmsas
        self.policy = policy
        self.idBlockDigest = idBlock
    }

    /// The VMSA's CR0 (VMCB save area offset 0x158).
    static let cr0Offset = SNPVMSA.Offset.cr0

    /// Why KVM would not measure a VMSA with this CR0 as given: it sets ET
    /// (kvm_set_cr0 on x86-64), clears CD and NW in the VMCB (svm_set_cr0),
    /// and refuses PG without PE (kvm_is_valid_cr0). nil when it keeps it.
    static func cr0Problem(_ cr0: UInt64) -> String? {
        if cr0 & 0x10 == 0 { return "lacks ET (bit 4), which KVM always sets" }
        if cr0 & (1 << 30 | 1 << 29) != 0 { return "sets CD or NW, which KVM clears in the VMCB" }
        if cr0 & (1 << 31) != 0, cr0 & 1 == 0 { return "sets PG without PE, which KVM refuses" }
        if cr0 >> 32 != 0 { return "sets reserved bits 63:32" }
        return nil
    }

    /// Whether the directive adds anything to the launch digest.
    static func measures(_ directive: IGVMDirective) -> Bool {
        switch directive {
        case .pageData, .parameterInsert, .vpContext: true
        default: false
        }
    }

    /// The launch digest: every update in order, then the VMSAs KVM measures at LAUNCH_FINISH.
    public var launchDigest: SHA384Digest {
        var digest = SNPLaunchDigest()
        for update in updates {
            if let contents = update.contents {
                for page in 0..<Int(update.pages) {
                    let bytes = contents[(page * 4096)..<((page + 1) * 4096)]
                    digest.addPage(gpa: update.gpa + UInt64(page) * 4096, type: update.type, contentsDigest: SHA384.hash(bytes))
                }
            } else {
                digest.addPages(gpa: update.gpa, count: update.pages, type: update.type)
            }
        }
        for vmsa in vmsas { digest.addPage(gpa: SNPLaunchDigest.vmsaGPA, type: .vmsa, contentsDigest: SHA384.hash(vmsa.page)) }
        return digest.value
    }
}
