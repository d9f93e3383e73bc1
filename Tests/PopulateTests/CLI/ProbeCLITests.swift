import Fixtures
import Foundation
import GuestMemfd
import Testing

/// `snpvmm probe` and the lower tiers a user can ask for, through the built
/// binary: the tier, what each missing feature costs, and the guest it boots.
@Suite(.enabled(if: Snpvmm.isBuilt, "the snpvmm executable is not built beside the tests"))
struct ProbeCLITests {
    @Test(.requiresKVM(.kvm))
    func probeNamesTheTierAndBootsItsGuestFromTheMemoryTheHostOffers() throws {
        let outcome = try Snpvmm.run(["probe"])
        #expect(outcome.status == 0, "\(outcome)")
        let lines = outcome.stdout.split(separator: "\n").map(String.init)
        #expect(lines.contains("tier                 \(KVMHost.tier)"))
        let ram = KVMHost.has(.mmap) ? "guest_memfd" : "memfd"
        #expect(lines.last == "guest said           \"hello from \(ram)\\n\"")
        let missing = lines.filter { $0.hasPrefix("missing ") }
        #expect(missing.contains { $0.contains("guest_memfd: ") } == !KVMHost.has(.guestMemfd))
        #expect(missing.contains { $0.contains("pre_fault: ") } == !KVMHost.has(.preFault))
    }

    @Test(.requiresKVM(.kvm))
    func probeJSONGivesTheTierTheMissingFeaturesAndTheBoot() throws {
        let outcome = try Snpvmm.run(["probe", "--json"])
        #expect(outcome.status == 0, "\(outcome)")
        let object = try #require(try JSONSerialization.jsonObject(with: Data(outcome.stdout.utf8)) as? [String: Any])
        #expect(object["tier"] as? String == KVMHost.tier.name)
        #expect(object["booted"] as? Bool == true)
        #expect(object["ram"] as? String == (KVMHost.has(.mmap) ? "guest_memfd" : "memfd"))
        #expect(object["guest_memfd"] as? Bool == KVMHost.has(.guestMemfd))
        let missing = try #require(object["missing"] as? [[String: String]])
        #expect(missing.contains { $0["feature"] == "guest_memfd" } == !KVMHost.has(.guestMemfd))
        #expect(missing.allSatisfy { $0["reason"]?.hasPrefix("host KVM") == true && !($0["cost"] ?? "").isEmpty })
    }

    /// On a host of any tier, hiding guest_memfd gives the T1 path.
    @Test(.requiresKVM(.kvm))
    func probeWithGuestMemfdHiddenIsTier1AndBootsFromMemfd() throws {
        let outcome = try Snpvmm.run(["probe"], environment: ["SNPVMM_HIDE_KVM_CAPS": "guest_memfd"])
        #expect(outcome.status == 0, "\(outcome)")
        #expect(outcome.stdout.contains("tier                 T1 (KVM without guest_memfd)\n"))
        #expect(outcome.stdout.contains("missing              guest_memfd: host KVM lacks guest_memfd (KVM_CAP_GUEST_MEMFD = 0)\n"))
        #expect(outcome.stdout.hasSuffix("guest said           \"hello from memfd\\n\"\n"))
    }

    @Test func probeWithoutKVMIsTier0AndExitsOne() throws {
        let outcome = try Snpvmm.run(["probe"], environment: ["SNPVMM_HIDE_KVM_CAPS": "kvm"])
        #expect(outcome.status == 1)
        #expect(outcome.stdout.hasPrefix("tier                 T0 (no usable /dev/kvm)\n"))
        #expect(outcome.stderr.hasPrefix("snpvmm: no guest can run here: open on /dev/kvm fd -1 failed: No such file or directory (ENOENT)"))
    }

    @Test func anUnknownFeatureToHideIsAUsageError() throws {
        let outcome = try Snpvmm.run(["probe"], environment: ["SNPVMM_HIDE_KVM_CAPS": "gmem"])
        #expect(outcome == Snpvmm.Outcome(
            stdout: "",
            stderr: "snpvmm: probe: SNPVMM_HIDE_KVM_CAPS: unknown KVM feature 'gmem' in 'gmem' (known: kvm, guest_memfd, mmap, attributes, pre_fault, confidential)\n",
            status: 2))
    }

    /// The fixture guest, run plain and launched on the emulated SNP
    /// platform, with guest_memfd hidden: the T1 path on any host.
    @Test(.requiresKVM(.kvm))
    func runWithGuestMemfdHiddenBootsFromMemfdAndEmulatesTheSameLaunch() throws {
        let directory = try TemporaryDirectory()
        let payload = Array("T1 path\n".utf8)
        let initrd = try directory.write("initrd", Fixtures.pvhCheckModule(payload))
        let arguments = ["run", "--kernel", Fixtures.pvhCheckPath, "--initrd", initrd]
        let note = "snpvmm: guest RAM is a memfd mapped shared, not guest_memfd: host KVM lacks guest_memfd (KVM_CAP_GUEST_MEMFD = 0)\n"
        let expected = RealBootTests.pvhCheckOutput(commandLine: "", payload: payload, memoryMap: RealBootTests.map256M)
        let hidden = ["SNPVMM_HIDE_KVM_CAPS": "guest_memfd"]
        #expect(try Snpvmm.run(arguments, environment: hidden) == Snpvmm.Outcome(stdout: expected, stderr: note, status: 33))

        let emulated = arguments + ["--platform", "snp", "--emulate"]
        let lower = try Snpvmm.run(emulated, environment: hidden)
        #expect(lower.status == 33 && lower.stdout == expected)
        #expect(lower.stderr.hasPrefix(note))
        // The launch happens on the emulated platform: the measurement cannot depend on the host's tier.
        let host = try Snpvmm.run(emulated)
        func measurement(_ stderr: String) -> String? {
            stderr.split(separator: "\n").first { $0.hasPrefix("snpvmm: emulated snp launch measurement ") }.map(String.init)
        }
        #expect(measurement(lower.stderr) != nil)
        #expect(measurement(lower.stderr) == measurement(host.stderr))
    }
}
