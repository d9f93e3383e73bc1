import GuestMemfd
import LaunchMeasurement
import KVMFake
@testable import GuestMemfd
@testable import Populate
import Testing

/// A launch flow on the fake, from KVM_CREATE_VM to the guest's first
/// run or pre-fault, the way an embedding VMM drives it.
enum LaunchFlow: String, CaseIterable, Sendable, Hashable, CustomStringConvertible {
    /// SEV-SNP from a separate source, then KVM_PRE_FAULT_MEMORY once the launch is finished.
    case snp
    /// SEV-SNP on a host whose guest_memfd converts in place.
    case snpInPlace
    case tdx
    /// Arm CCA, then the first KVM_RUN, which activates the realm.
    case cca
    /// A default VM filled through its mapping, then KVM_PRE_FAULT_MEMORY.
    case plainPreFault

    var description: String {
        switch self {
        case .snp: "SEV-SNP"
        case .snpInPlace: "SEV-SNP in place"
        case .tdx: "TDX"
        case .cca: "CCA"
        case .plainPreFault: "plain VM pre-fault"
        }
    }

    var platform: Platform {
        switch self {
        case .snp, .snpInPlace: .snp
        case .tdx: .tdx
        case .cca: .cca
        case .plainPreFault: .plain
        }
    }

    /// What runs after population: the pre-fault, or the realm's activation.
    var after: KVMOperation? {
        switch self {
        case .snp, .plainPreFault: .ioctl(.preFaultMemory)
        case .cca: .ioctl(.run)
        case .snpInPlace, .tdx: nil
        }
    }

    /// The calls whose work goes page by page, with the ioctl the fake counts pages in.
    var pageCalls: [(target: FaultInjectingKernel.Target, ioctl: Ioctl)] {
        switch self {
        case .snp: [(.encryptCommand(.snpLaunchUpdate), .memoryEncryptOp), (.ioctl(.preFaultMemory), .preFaultMemory)]
        case .snpInPlace: [(.encryptCommand(.snpLaunchUpdate), .memoryEncryptOp)]
        case .tdx: [(.encryptCommand(.tdxInitMemRegion), .memoryEncryptOp)]
        case .cca: [(.ioctl(.armRMIPopulate), .armRMIPopulate)]
        case .plainPreFault: [(.ioctl(.preFaultMemory), .preFaultMemory)]
        }
    }
}

/// Where a flow failed, with what it had done.
enum FlowFailure: Sendable, CustomStringConvertible {
    /// Creating the VM and its objects, before population.
    case setup(KVMError)
    /// An error that is not the kernel's, which no fault should produce.
    case unexpected(String)
    /// Population or pre-fault, through Populate.
    case populate(PopulateError)
    /// The realm's first KVM_RUN.
    case run(KVMError)

    var kernelError: KVMError? {
        switch self {
        case .setup(let error), .run(let error): error
        case .populate(let error): error.kernelError
        case .unexpected: nil
        }
    }

    var description: String {
        switch self {
        case .setup(let error): "setup: \(error)"
        case .populate(let error): "population: \(error)"
        case .run(let error): "run: \(error)"
        case .unexpected(let text): "unexpected: \(text)"
        }
    }
}

/// What a flow left, read from the fake before its objects were released.
struct FlowOutcome: Sendable {
    var failure: FlowFailure?
    var result: PopulateResult?
    /// Calls resumed by the VMM's own loops (the realm's first run).
    var runRetries = 0
    var trace: [FaultInjectingKernel.Call] = []
    /// Trace indices where population and the step after it began.
    var populationStart: Int?
    var afterStart: Int?
    var measurement: [UInt8]?
    var platformLog: [FakePlatformPage] = []
    var privateRanges: [GuestRange] = []
    /// SHA-384 of every byte of the guest_memfd as the platform holds it.
    var memoryDigest: [UInt8] = []
    /// Which pages of the guest_memfd have a host frame, after population and at the end.
    var allocatedAfterPopulation: [Bool] = []
    var allocated: [Bool] = []
    /// Descriptors and mappings of the fake once every object was released.
    var descriptorsLeft = -1
    var mappingsLeft = -1

    var retries: Int { (result?.report.retries ?? 0) + runRetries }

    /// The pages the platform populated, from its own log, coalesced.
    var platformPopulated: [GuestRange] {
        coalesce(platformLog.filter { ["NORMAL", "ZERO", "UNMEASURED", "SECRETS", "CPUID", "PAGE.ADD", "DATA_CREATE",
                                       "DATA_CREATE_UNKNOWN"].contains($0.kind) }
            .map { GuestRange(start: $0.gpa, size: pageSize) })
    }
}

/// Joins touching and overlapping ranges, in address order.
func coalesce(_ ranges: [GuestRange]) -> [GuestRange] {
    var joined: [GuestRange] = []
    for range in ranges.filter({ $0.size > 0 }).sorted(by: { $0.start.rawValue < $1.start.rawValue }) {
        if let last = joined.last, range.start.rawValue <= last.start.rawValue + last.size {
            let end = max(last.start.rawValue + last.size, range.start.rawValue + range.size)
            joined[joined.count - 1] = GuestRange(start: last.start, size: end - last.start.rawValue)
        } else {
            joined.append(range)
        }
    }
    return joined
}

extension LaunchFlow {
    /// Runs the flow with faults armed by `arm`, then releases every object.
    func run(arm: (FakeKVM, FaultInjectingKernel) -> Void = { _, _ in }) -> FlowOutcome {
        var outcome = FlowOutcome()
        var fake: FakeKVM?, kernel: FaultInjectingKernel?
        do {
            let rig = try PopulationRig(platform, inPlace: self == .snpInPlace,
                                        profile: self == .plainPreFault ? .snpHost : nil) { armedFake, armedKernel in
                fake = armedFake
                kernel = armedKernel
                arm(armedFake, armedKernel)
            }
            outcome.populationStart = rig.kernel.trace.count
            let populator = Populator(backend: rig.backend, memory: rig.layout, options: rig.observed)
            do {
                var result = try populator.populate(plan)
                outcome.result = result
                outcome.allocatedAfterPopulation = allocated(rig)
                outcome.afterStart = rig.kernel.trace.count
                switch after {
                case .ioctl(.preFaultMemory)?:
                    try populator.prePopulate(vcpu: rig.vcpu, report: &result.report)
                case .ioctl(.run)?:
                    try activate(rig, retries: &outcome.runRetries)
                default: break
                }
                outcome.result = result
            } catch let error as PopulateError {
                outcome.failure = .populate(error)
            } catch let error as KVMError {
                outcome.failure = .run(error)
            } catch {
                outcome.failure = .unexpected("\(error)")
            }
            outcome.trace = rig.kernel.trace
            outcome.measurement = rig.fake.launchMeasurement(of: rig.vm)
            outcome.platformLog = rig.fake.platformLog(of: rig.vm)
            outcome.privateRanges = rig.fake.privateRanges(of: rig.vm)
            outcome.memoryDigest = SHA384.hash(rig.fake.contents(of: rig.memfd) ?? []).bytes
            outcome.allocated = allocated(rig)
        } catch let error as LaunchError {
            outcome.failure = error.kvmError.map { .setup($0) } ?? .unexpected("\(error)")
            outcome.trace = kernel?.trace ?? []
        } catch {
            outcome.failure = .unexpected("\(error)")
            outcome.trace = kernel?.trace ?? []
        }
        outcome.descriptorsLeft = fake?.openDescriptors ?? -1
        outcome.mappingsLeft = fake?.liveMappings ?? -1
        return outcome
    }

    /// The flow's plan: `samplePlan`, made once.
    var plan: LaunchPlan { LaunchFlow.plans[platform]! }
    private static let plans = Dictionary(uniqueKeysWithValues: Platform.allCases.map { ($0, samplePlan($0)) })

    private func allocated(_ rig: PopulationRig) -> [Bool] {
        (0..<(PopulationRig.memorySize / pageSize)).map { rig.fake.hostFrame(of: rig.memfd, offset: $0 * pageSize) != nil }
    }

    /// The realm activates at the first KVM_RUN; the VMM enters again after EINTR or EAGAIN.
    private func activate(_ rig: PopulationRig, retries: inout Int) throws(KVMError) {
        while true {
            do {
                _ = try rig.vcpu.run()
                return
            } catch where (error.errno == .interrupted || error.errno == .resourceTemporarilyUnavailable) && retries < 16 {
                retries += 1
            }
        }
    }
}

/// One cell of the fault-injection matrix: a flow, one of its calls, an
/// errno, and where the fault strikes.
struct FaultCell: Sendable, CustomTestStringConvertible {
    enum Position: Sendable {
        /// Before page `n` of the call's page-by-page work, counted over the whole flow.
        case page(Int, label: String)
        /// On occurrence `n` (from 0) of the call.
        case call(Int, label: String)
    }

    enum Phase: Sendable { case setup, population, after }

    enum Expectation: Sendable {
        /// Resumes to the clean run's memory and measurement, the resumption counted.
        case resumes
        /// Fails with an error naming the call, and an account equal to what the fake did.
        /// The note names the kernel function that keeps a transient errno from this call.
        case fails(note: String?)
    }

    let flow: LaunchFlow
    let target: FaultInjectingKernel.Target
    /// The ioctl whose pages the fake counts, for page positions.
    let pageIoctl: Ioctl?
    let errno: Errno
    let position: Position
    let phase: Phase
    let expectation: Expectation

    var isTransient: Bool { errno == .interrupted || errno == .resourceTemporarilyUnavailable }

    var testDescription: String {
        let place = switch position {
        case .page(_, let label), .call(_, let label): label
        }
        var text = "\(flow) \(target) \(errno.name) at \(place)"
        if case .fails(let note?) = expectation { text += " (fails: \(note))" }
        return text
    }

    /// The operation the failing call is traced as.
    var operation: KVMOperation {
        switch target {
        case .ioctl(let ioctl): .ioctl(ioctl)
        case .encryptCommand(let command): .encryptOp(command)
        case .syscall(let call): .syscall(call)
        }
    }

    func arm(_ fake: FakeKVM, _ kernel: FaultInjectingKernel) {
        switch position {
        case .page(let pages, _):
            if isTransient {
                fake.interrupt(afterPages: pages, with: errno, in: pageIoctl)
            } else {
                fake.failPages(after: pages, with: errno, in: pageIoctl)
            }
        case .call(let index, _):
            kernel.inject(errno, into: target, isTransient ? .afterCalls(index) : .fromCall(index))
        }
    }
}

enum FaultMatrix {
    static let errnos: [Errno] = [.interrupted, .resourceTemporarilyUnavailable, .badAddress, .noMemory, .ioError]

    /// Each flow run once without faults.
    static let clean: [LaunchFlow: FlowOutcome] = Dictionary(uniqueKeysWithValues: LaunchFlow.allCases.map { ($0, $0.run()) })

    /// Every cell, enumerated from the clean runs' traces so that the list
    /// follows the flows as they change.
    static let cells: [FaultCell] = LaunchFlow.allCases.flatMap { cells(for: $0) }

    static func cells(for flow: LaunchFlow) -> [FaultCell] {
        guard let clean = clean[flow], clean.failure == nil, let start = clean.populationStart else { return [] }
        var cells: [FaultCell] = []
        var seen: [KVMOperation] = []
        for call in clean.trace where !seen.contains(call.operation) {
            if case .syscall = call.operation { continue }
            seen.append(call.operation)
        }
        for operation in seen {
            let target: FaultInjectingKernel.Target
            switch operation {
            case .ioctl(let ioctl): target = .ioctl(ioctl)
            case .encryptOp(let command): target = .encryptCommand(command)
            case .syscall: continue
            }
            let indices = clean.trace.indices.filter { clean.trace[$0].operation == operation }
            func phase(_ index: Int) -> FaultCell.Phase {
                index < start ? .setup : index < (clean.afterStart ?? .max) ? .population : .after
            }
            if let page = flow.pageCalls.first(where: { $0.target == target }) {
                for (pages, label) in pagePositions(flow, target, clean) {
                    for errno in errnos {
                        cells.append(FaultCell(flow: flow, target: target, pageIoctl: page.ioctl, errno: errno,
                                               position: .page(pages, label: label), phase: phase(indices[0]),
                                               expectation: expectation(target, errno, phase: phase(indices[0]), page: true)))
                    }
                }
                continue
            }
            var occurrences = [0]
            if indices.count > 2 { occurrences.append(indices.count / 2) }
            if indices.count > 1 { occurrences.append(indices.count - 1) }
            for occurrence in occurrences {
                let phase = phase(indices[occurrence])
                let label = indices.count == 1 ? "its only call"
                    : occurrence == 0 ? "the first of \(indices.count) calls"
                    : occurrence == indices.count - 1 ? "the last of \(indices.count) calls"
                    : "call \(occurrence + 1) of \(indices.count)"
                for errno in errnos {
                    cells.append(FaultCell(flow: flow, target: target, pageIoctl: nil, errno: errno,
                                           position: .call(occurrence, label: label), phase: phase,
                                           expectation: expectation(target, errno, phase: phase, page: false)))
                }
            }
        }
        return cells
    }

    /// The first, a middle and the last page of a call's work in the clean run.
    static func pagePositions(_ flow: LaunchFlow, _ target: FaultInjectingKernel.Target, _ clean: FlowOutcome)
        -> [(Int, String)]
    {
        if target == .ioctl(.preFaultMemory) {
            // Pre-fault maps a whole 2 MiB page where one attribute covers it, and
            // checks for signals between mappings, so its last unit is 512 pages.
            let total = Int(PopulationRig.memorySize / pageSize)
            return [(0, "the first page"), (total / 2, "the middle page (\(total / 2) of \(total))"),
                    (total - 512, "the last 2 MiB unit (page \(total - 512) of \(total))")]
        }
        let total = clean.platformPopulated.reduce(0) { $0 + Int($1.size / pageSize) }
        return [(0, "the first page"), (total / 2, "a middle page (\(total / 2) of \(total))"),
                (total - 1, "the last page (\(total - 1) of \(total))")]
    }

    /// What a cell must do: transient errnos resume where the VMM or Populate
    /// sends the call again; elsewhere the kernel cannot answer them, and the
    /// note names the function that says so.
    static func expectation(_ target: FaultInjectingKernel.Target, _ errno: Errno, phase: FaultCell.Phase, page: Bool)
        -> FaultCell.Expectation
    {
        guard errno == .interrupted || errno == .resourceTemporarilyUnavailable else { return .fails(note: nil) }
        if page { return .resumes }
        switch target {
        case .ioctl(.setMemoryAttributes), .ioctl(.setMemoryAttributes2), .ioctl(.run):
            return .resumes
        case .encryptCommand(.tdxInitVM) where errno == .resourceTemporarilyUnavailable:
            return .resumes
        default:
            return .fails(note: noTransient[target] ?? "no note")
        }
    }

    /// Why a real kernel never answers these calls with EINTR or EAGAIN.
    static let noTransient: [FaultInjectingKernel.Target: String] = [
        .ioctl(.createVM): "kvm_dev_ioctl_create_vm checks for no signal",
        .ioctl(.getVCPUMmapSize): "kvm_dev_ioctl returns the kvm_run size and never fails",
        .ioctl(.checkExtension): "kvm_vm_ioctl_check_extension_generic returns a value and never fails",
        .ioctl(.createVCPU): "kvm_vm_ioctl_create_vcpu takes kvm->lock with mutex_lock and checks for no signal",
        .ioctl(.createGuestMemfd): "kvm_gmem_create fails only with EINVAL or ENOMEM",
        .ioctl(.setUserMemoryRegion2): "kvm_set_memory_region runs under slots_lock and checks for no signal",
        .ioctl(.getRegs): "kvm_vcpu_ioctl's mutex_lock_killable gives EINTR only for a fatal signal, which never returns",
        .ioctl(.getSregs): "kvm_vcpu_ioctl's mutex_lock_killable gives EINTR only for a fatal signal, which never returns",
        .encryptCommand(.sevInit2): "sev_mem_enc_ioctl holds kvm->lock and the PSP command waits uninterruptibly",
        .encryptCommand(.snpLaunchStart): "sev_mem_enc_ioctl holds kvm->lock and the PSP command waits uninterruptibly",
        .encryptCommand(.snpLaunchFinish): "sev_mem_enc_ioctl holds kvm->lock and the PSP command waits uninterruptibly",
        .encryptCommand(.tdxInitVM): "__tdx_td_init answers EAGAIN (no entropy) but never EINTR",
        .encryptCommand(.tdxInitVCPU): "tdx_td_vcpu_init answers ENOMEM, EIO or EINVAL; kvm_vcpu_ioctl gives EINTR only for a fatal signal",
        .encryptCommand(.tdxFinalizeVM): "tdx_td_finalize answers EINVAL, EBUSY or EIO and checks for no signal",
    ]

    /// The calls that populate or convert guest memory.
    static func populates(_ operation: KVMOperation) -> Bool {
        switch operation {
        case .encryptOp(.snpLaunchUpdate), .encryptOp(.tdxInitMemRegion), .ioctl(.armRMIPopulate),
             .ioctl(.setMemoryAttributes), .ioctl(.setMemoryAttributes2): true
        default: false
        }
    }
}

@Suite struct FaultMatrixTests {
    @Test func everyFlowRunsCleanAndTheMatrixCoversEachOfItsCalls() throws {
        for flow in LaunchFlow.allCases {
            let clean = try #require(FaultMatrix.clean[flow])
            #expect(clean.failure == nil, "\(flow): \(String(describing: clean.failure))")
            #expect(clean.retries == 0)
            #expect(clean.descriptorsLeft == 0 && clean.mappingsLeft == 0)
            let covered = Set(FaultMatrix.cells.filter { $0.flow == flow }.map(\.operation))
            let issued = Set(clean.trace.map(\.operation).filter { if case .syscall = $0 { false } else { true } })
            #expect(covered == issued, "\(flow)")
        }
    }

    @Test(arguments: FaultMatrix.cells)
    func aFaultResumesToTheCleanRunOrIsAccountedFor(_ cell: FaultCell) throws {
        let clean = try #require(FaultMatrix.clean[cell.flow])
        let outcome = cell.flow.run(arm: cell.arm)
        #expect(outcome.descriptorsLeft == 0, "descriptors left open")
        #expect(outcome.mappingsLeft == 0, "mappings left behind")
        switch cell.expectation {
        case .resumes: checkResumed(cell, outcome, clean)
        case .fails: checkAccounted(cell, outcome, clean)
        }
    }

    func checkResumed(_ cell: FaultCell, _ outcome: FlowOutcome, _ clean: FlowOutcome) {
        if let failure = outcome.failure {
            Issue.record("expected the flow to resume, it failed: \(failure)")
            return
        }
        #expect(outcome.memoryDigest == clean.memoryDigest)
        #expect(outcome.allocated == clean.allocated)
        #expect(outcome.measurement == clean.measurement)
        #expect(outcome.result?.expectedMeasurement == clean.result?.expectedMeasurement)
        #expect(outcome.result?.reportedMeasurement == clean.result?.reportedMeasurement)
        if cell.phase == .setup {
            #expect(outcome.trace.contains { $0.injected && $0.operation == cell.operation })
        } else {
            #expect(outcome.retries >= 1, "the resumption is counted")
        }
    }

    func checkAccounted(_ cell: FaultCell, _ outcome: FlowOutcome, _ clean: FlowOutcome) {
        guard let failure = outcome.failure else {
            Issue.record("expected the flow to fail")
            return
        }
        let error = failure.kernelError
        #expect(error?.operation == cell.operation, "\(failure)")
        // SNP LAUNCH_UPDATE answers EIO, whatever failed, when its first page fails (snp_launch_update).
        let snpFirstPage = cell.operation == .encryptOp(.snpLaunchUpdate) && error?.errno == .ioError
        #expect(error?.errno == cell.errno || snpFirstPage, "\(failure)")
        let plan = cell.flow.plan
        switch failure {
        case .setup, .unexpected:
            #expect(cell.phase == .setup, "\(failure)")
            #expect(!outcome.trace.contains { FaultMatrix.populates($0.operation) }, "nothing may be populated")
        case .run:
            // The population finished; the realm's first run failed before activation.
            #expect(outcome.platformPopulated == clean.platformPopulated)
            #expect(outcome.result?.expectedMeasurement == clean.result?.expectedMeasurement)
            #expect(!outcome.platformLog.contains { $0.kind == "REC" })
        case .populate(let populate) where cell.phase == .after:
            // The launch is complete; pre-fault stopped where the error says.
            #expect(outcome.platformPopulated == clean.platformPopulated)
            #expect(outcome.measurement == clean.measurement)
            let completed = Int((error?.completedBytes ?? 0) / pageSize)
            if case .page(let pages, _) = cell.position {
                #expect(completed == pages, "\(populate)")
            }
            for page in outcome.allocated.indices {
                let expected = page < completed ? clean.allocated[page] : clean.allocatedAfterPopulation[page]
                #expect(outcome.allocated[page] == expected, "page \(page) of \(completed) pre-faulted")
            }
        case .populate(let populate):
            // CCA needs no call for zero pages: delegation already scrubbed
            // them, so only the account lists them.
            let uncalled = cell.flow == .cca ? plan.regions.filter { $0.kind == .zero }.map(\.range) : []
            #expect(coalesce(populate.populated.filter { !uncalled.contains($0) }) == outcome.platformPopulated, "\(populate)")
            #expect(coalesce(populate.madePrivate) == outcome.privateRanges, "\(populate)")
            if let name = populate.region {
                let region = plan.regions.first { $0.name == name }
                #expect(region != nil)
                var next = region?.range.start.rawValue ?? 0
                while outcome.platformPopulated.contains(where: { $0.contains(GuestPhysicalAddress(next)) }) { next += pageSize }
                #expect(populate.nextGPA == next, "\(populate)")
            } else {
                #expect(populate.nextGPA == nil)
                #expect(coalesce(populate.populated) == coalesce(plan.regions.map(\.range)), "\(populate)")
            }
        }
    }
}
