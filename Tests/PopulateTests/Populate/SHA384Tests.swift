import GuestMemfd
import LaunchMeasurement
import Populate
import Testing

@Suite struct SHA384Tests {
    @Test func digestOfABCMatchesTheFIPS180Vector() {
        #expect(SHA384.hash(Array("abc".utf8)).hex ==
            "cb00753f45a35e8bb5a03d699ac65007272c32ab0eded1631a8b605a43ff5bed8086072ba1e7cc2358baeca134c825a7")
    }

    @Test func digestOfNothingMatchesTheFIPS180Vector() {
        #expect(SHA384.hash([]).hex ==
            "38b060a751ac96384cd9327eb1b1e36a21fdb71114be07434c0cc7bf63f6e1da274edebfe76f65fbd51ad2f14898b95b")
    }

    @Test func incrementalUpdatesEqualOneShot() {
        let bytes = (0..<10_000).map { UInt8(truncatingIfNeeded: $0 &* 13) }
        let hasher = SHA384()
        hasher.update(bytes[..<1234])
        hasher.update(bytes[1234...])
        #expect(hasher.finalize() == SHA384.hash(bytes))
    }
}
