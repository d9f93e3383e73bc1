import GuestMemfd
import LaunchMeasurement
/// The measurements a launch plan will produce, computed in-process with the
/// same digest types `snpvmm measure` uses, so that population code can
/// check what the platform reports against one implementation.
extension LaunchPlan {
    /// The SEV-SNP launch digest after populating the plan in order and
    /// finishing the launch with `vmsas` (one 4096-byte page per vCPU).
    ///
    /// Kinds map to SNP page types as `PageKind` documents: normal → NORMAL
    /// (each page hashed, the region's contents zero-padded to its size),
    /// zero → ZERO, unmeasured → UNMEASURED, secrets → SECRETS, cpuid → CPUID.
    public func expectedSNPLaunchDigest(vmsas: [[UInt8]], start: SHA384Digest = .zero) throws(ExpectedMeasurementError) -> SHA384Digest {
        var digest = SNPLaunchDigest(start: start)
        for (index, region) in regions.enumerated() {
            let gpa = region.range.start.rawValue
            let type: SNPPageType
            switch region.kind {
            case .normal: type = .normal
            case .zero: type = .zero
            case .unmeasured: type = .unmeasured
            case .secrets: type = .secrets
            case .cpuid: type = .cpuid
            }
            guard region.range.isPageAligned else { throw .notPageAligned(index: index, region: region.name) }
            if type == .normal {
                let bytes = try Self.pageContents(of: region, index: index)
                do { try digest.addNormalPages(gpa: gpa, contents: bytes) } catch {
                    throw .notPageAligned(index: index, region: region.name)
                }
            } else {
                digest.addPages(gpa: gpa, count: region.range.pageCount, type: type)
            }
        }
        for (vcpu, vmsa) in vmsas.enumerated() {
            do { try digest.addVMSA(vmsa) } catch { throw .badVMSA(vcpu: vcpu, length: vmsa.count) }
        }
        return digest.value
    }

    /// MRTD after adding the plan's regions in order and finalising.
    ///
    /// normal → PAGE.ADD and MR.EXTEND of every page; zero and unmeasured →
    /// PAGE.ADD only (KVM_TDX_INIT_MEM_REGION without MEASURE, as QEMU adds
    /// TDVF TempMem); secrets and cpuid are SNP-only and rejected.
    public func expectedMRTD() throws(ExpectedMeasurementError) -> SHA384Digest {
        var measurement = TDXMeasurement()
        for (index, region) in regions.enumerated() {
            guard region.range.isPageAligned else { throw .notPageAligned(index: index, region: region.name) }
            guard region.kind != .secrets, region.kind != .cpuid else {
                throw .kindNotOnPlatform(index: index, region: region.name, kind: region.kind, platform: "TDX")
            }
            let bytes = try Self.pageContents(of: region, index: index)
            let measure = region.kind == .normal
            bytes.withUnsafeBytes { raw in
                for page in 0..<Int(region.range.pageCount) {
                    measurement.addCheckedPage(gpa: region.range.start.rawValue + UInt64(page) * 4096,
                                               contents: UnsafeRawBufferPointer(rebasing: raw[(page * 4096)..<((page + 1) * 4096)]),
                                               measure: measure)
                }
            }
        }
        return measurement.finalize()
    }

    /// The CCA realm initial measurement after creating the realm with
    /// `parameters`, populating the plan in order and creating one runnable
    /// REC at `pc` with `gprs` (RMM v2.0).
    ///
    /// normal → measured RMI_DATA_CREATE per granule; unmeasured →
    /// RMI_DATA_CREATE without RMI_MEASURE_CONTENT; zero → nothing (a
    /// delegated granule is already scrubbed, and RIPAS RAM is not measured
    /// in v2.0); secrets and cpuid are SNP-only and rejected.
    public func expectedRealmInitialMeasurement(parameters: CCARealmParameters, pc: UInt64,
                                                gprs: [UInt64]) throws(ExpectedMeasurementError) -> [UInt8] {
        var measurement = CCARealmMeasurement(parameters: parameters)
        for (index, region) in regions.enumerated() {
            guard region.range.isPageAligned else { throw .notPageAligned(index: index, region: region.name) }
            switch region.kind {
            case .normal:
                measurement.dataCreate(loading: try Self.pageContents(of: region, index: index), at: region.range.start.rawValue)
            case .unmeasured:
                for page in 0..<region.range.pageCount {
                    do { try measurement.dataCreate(ipa: region.range.start.rawValue + page * 4096, contents: nil, measure: false) } catch {
                        throw .notPageAligned(index: index, region: region.name)
                    }
                }
            case .zero:
                break
            case .secrets, .cpuid:
                throw .kindNotOnPlatform(index: index, region: region.name, kind: region.kind, platform: "CCA")
            }
        }
        measurement.recCreate(pc: pc, gprs: gprs, runnable: true)
        return measurement.rim
    }

    /// Checks, before anything is populated, that a file region's file
    /// holds every byte the region names.
    static func checkContents(of region: PlanRegion, index: Int) throws(ExpectedMeasurementError) {
        guard case .file(let path, let offset, let length) = region.contents else { return }
        let size: UInt64
        do { size = try FileBytes.size(path) } catch { throw .unreadable(index: index, region: region.name, error: error) }
        let available = size > offset ? size - offset : 0
        guard available >= length else {
            throw .shortFile(index: index, region: region.name, expected: length, read: available)
        }
    }

    /// Bytes `offset ..< offset + destination.count` of a region's contents
    /// (zero past their end), read straight into `destination`, so that a
    /// region is never held whole.
    static func readContents(of region: PlanRegion, index: Int, offset: UInt64,
                             into destination: UnsafeMutableRawBufferPointer) throws(ExpectedMeasurementError) {
        var filled = 0
        switch region.contents {
        case .bytes(let bytes):
            if offset < UInt64(bytes.count) {
                filled = min(destination.count, bytes.count - Int(offset))
                bytes.withUnsafeBytes { destination.baseAddress!.copyMemory(from: $0.baseAddress! + Int(offset), byteCount: filled) }
            }
        case .zeros:
            break
        case .file(let path, let fileOffset, let length):
            let wanted = offset < length ? min(UInt64(destination.count), length - offset) : 0
            if wanted > 0 {
                do {
                    filled = try FileBytes.read(path, offset: fileOffset + offset,
                                                into: UnsafeMutableRawBufferPointer(rebasing: destination[0..<Int(wanted)]))
                } catch {
                    throw .unreadable(index: index, region: region.name, error: error)
                }
                guard filled == Int(wanted) else {
                    throw .shortFile(index: index, region: region.name, expected: length, read: offset + UInt64(filled))
                }
            }
        }
        if filled < destination.count, let base = destination.baseAddress {
            (base + filled).initializeMemory(as: UInt8.self, repeating: 0, count: destination.count - filled)
        }
    }

    /// The region's bytes, zero-padded to its whole size (`readContents` over all of it).
    static func pageContents(of region: PlanRegion, index: Int) throws(ExpectedMeasurementError) -> [UInt8] {
        guard let size = Int(exactly: region.range.size), region.contents.count <= region.range.size else {
            throw .notPageAligned(index: index, region: region.name)
        }
        var bytes = [UInt8](repeating: 0, count: size)
        try bytes.withUnsafeMutableBytes { raw in
            Result { () throws(ExpectedMeasurementError) in try readContents(of: region, index: index, offset: 0, into: raw) }
        }.get()
        return bytes
    }
}

/// Why a plan's expected measurement cannot be computed.
public enum ExpectedMeasurementError: Error, Equatable, Sendable, CustomStringConvertible {
    case notPageAligned(index: Int, region: String)
    case kindNotOnPlatform(index: Int, region: String, kind: PageKind, platform: String)
    case unreadable(index: Int, region: String, error: FileReadError)
    case shortFile(index: Int, region: String, expected: UInt64, read: UInt64)
    case badVMSA(vcpu: Int, length: Int)

    public var description: String {
        switch self {
        case .notPageAligned(let index, let region):
            "plan region \(index) '\(region)' is not whole 4 KiB pages or holds more contents than its range"
        case .kindNotOnPlatform(let index, let region, let kind, let platform):
            "plan region \(index) '\(region)' is a \(kind.rawValue) region, which \(platform) has no page type for"
        case .unreadable(let index, let region, let error): "plan region \(index) '\(region)': \(error)"
        case .shortFile(let index, let region, let expected, let read):
            "plan region \(index) '\(region)': its file holds \(read) of the \(expected) bytes named"
        case .badVMSA(let vcpu, let length): "the VMSA of vCPU \(vcpu) is \(length) bytes, not 4096"
        }
    }
}
