import GuestMemfd
/// How guest memory was faulted in ahead of the guest.
public enum PrePopulation: Sendable, Equatable, CustomStringConvertible {
    /// KVM_PRE_FAULT_MEMORY built the guest's page tables (hosts with TDP,
    /// after the launch is finished on SNP and TDX).
    case preFaultMemory(bytes: UInt64)
    /// The host faulted the guest_memfd pages in through its mappings with
    /// MADV_POPULATE_WRITE (shared memory only); the guest still builds its
    /// page-table entries, but finds the pages allocated.
    case madvisePopulateWrite(bytes: UInt64)
    /// Neither is possible: the memory is private and the host has no pre-fault.
    case none(reason: String)

    public var description: String {
        switch self {
        case .preFaultMemory(let bytes): "KVM_PRE_FAULT_MEMORY over \(bytes) bytes"
        case .madvisePopulateWrite(let bytes): "MADV_POPULATE_WRITE over \(bytes) bytes"
        case .none(let reason): "none (\(reason))"
        }
    }

    /// The bytes faulted in.
    public var bytes: UInt64 {
        switch self {
        case .preFaultMemory(let bytes), .madvisePopulateWrite(let bytes): bytes
        case .none: 0
        }
    }
}

extension Populator {
    /// Faults guest memory in ahead of the guest, so its first touches do
    /// not each take a fault: KVM_PRE_FAULT_MEMORY where the host offers it,
    /// resuming from the kernel's progress; otherwise, for memory that stays
    /// shared, MADV_POPULATE_WRITE through the guest_memfd mappings.
    ///
    /// - Parameter vcpu: the vCPU to pre-fault through (pre-fault is a vCPU ioctl).
    public func prePopulate(vcpu: VCPU) throws(PopulateError) -> PrePopulation {
        var resumptions = 0
        return try prePopulate(vcpu: vcpu, resumptions: &resumptions)
    }

    /// `prePopulate(vcpu:)`, recording the method and the calls resumed in a population's report.
    /// The time and bytes go into the report as its "pre-fault" phase.
    public func prePopulate(vcpu: VCPU, report: inout PopulateReport) throws(PopulateError) {
        var resumptions = 0
        let start = PhaseClock.now()
        let method = try prePopulate(vcpu: vcpu, resumptions: &resumptions)
        report.phaseSeconds["pre-fault", default: 0] += PhaseClock.now() - start
        report.phaseBytes["pre-fault", default: 0] += method.bytes
        report.prePopulation = method.description
        report.retries += resumptions
    }

    private func prePopulate(vcpu: VCPU, resumptions: inout Int) throws(PopulateError) -> PrePopulation {
        let total = memory.slots.reduce(0) { $0 + $1.range.size }
        var preFault = false
        do { preFault = try vcpu.vm.kvm.checkExtension(.preFaultMemory) != 0 } catch {
            throw PopulateError(.kernel(error))
        }
        if preFault {
            for slot in memory.slots {
                do {
                    resumptions += try vcpu.preFaultMemory(covering: slot.range, interruptionLimit: options.interruptionLimit)
                } catch {
                    throw PopulateError(.kernel(error))
                }
            }
            return .preFaultMemory(bytes: total)
        }
        guard backend.capabilities.platform == .plain else {
            return .none(reason: "private memory cannot be touched by the host, and this host has no KVM_PRE_FAULT_MEMORY")
        }
        for slot in memory.slots {
            guard let mapping = slot.mapping else { continue }
            do { try mapping.populateWrite(offset: Int(slot.fileOffset), count: Int(slot.range.size)) } catch {
                throw PopulateError(.kernel(error))
            }
        }
        return .madvisePopulateWrite(bytes: total)
    }
}
