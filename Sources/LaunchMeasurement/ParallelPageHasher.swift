import Dispatch

/// Hashes consecutive 4 KiB pages on all cores and folds the hashes into a
/// chain in page order. Page hashes are independent of each other; only the
/// chain is ordered, so it runs on one thread while the other threads hash
/// the next batch.
public enum ParallelPageHasher {
    /// Pages per unit of hashing work handed to one thread.
    static let pagesPerTask = 256
    /// Pages hashed before their digests are chained (16 MiB): bounds the
    /// memory for digests and lets the chain overlap the hashing.
    static let pagesPerBatch = 8192

    /// Calls `link(pageIndex, digest)` for every 4096-byte page of `bytes`
    /// (whose count is a multiple of 4096), in page order, one call at a time.
    /// Pages are hashed with `algorithm` on all cores, each task with one
    /// libcrypto context it reuses and digests written in place.
    public static func forEachPageDigest(_ bytes: UnsafeRawBufferPointer, algorithm: MessageDigest,
                                         link: (Int, UnsafeRawBufferPointer) -> Void) {
        let digestLength = algorithm.digestLength
        let pageCount = bytes.count / 4096
        guard pageCount > 0, let base = bytes.baseAddress else { return }
        let batchCount = (pageCount + pagesPerBatch - 1) / pagesPerBatch
        // Two digest buffers: one being filled for batch n while batch n - 1's is chained.
        let buffers = [UnsafeMutableRawBufferPointer.allocate(byteCount: pagesPerBatch * digestLength, alignment: 8),
                       UnsafeMutableRawBufferPointer.allocate(byteCount: pagesPerBatch * digestLength, alignment: 8)]
        defer { buffers.forEach { $0.deallocate() } }
        let source = UnsafeSendableAddress(base)
        withoutActuallyEscaping(link) { link in
        for batch in 0...batchCount {
            let firstPage = batch * pagesPerBatch
            let pagesInBatch = batch < batchCount ? min(pagesPerBatch, pageCount - firstPage) : 0
            let hashTasks = (pagesInBatch + pagesPerTask - 1) / pagesPerTask
            let chainTasks = batch > 0 ? 1 : 0
            let target = UnsafeSendableAddress(UnsafeRawPointer(buffers[batch % 2].baseAddress!))
            let previous = UnsafeRawPointer(buffers[(batch + 1) % 2].baseAddress!)
            let chain = {
                let previousFirst = (batch - 1) * pagesPerBatch
                for page in previousFirst..<min(previousFirst + pagesPerBatch, pageCount) {
                    link(page, UnsafeRawBufferPointer(start: previous + (page - previousFirst) * digestLength, count: digestLength))
                }
            }
            let hashTask = { (task: Int) in
                let first = task * pagesPerTask
                let digester = PageDigester(algorithm)
                for page in first..<min(first + pagesPerTask, pagesInBatch) {
                    digester.digest(UnsafeRawBufferPointer(start: source.pointer + (firstPage + page) * 4096, count: 4096),
                                    into: UnsafeMutableRawPointer(mutating: target.pointer + page * digestLength))
                }
            }
            if hashTasks + chainTasks == 1 {
                if chainTasks == 1 { chain() } else { hashTask(0) }
            } else {
                // Iteration 0 chains the previous batch, so it starts first; the rest hash this one.
                // The chain is the only iteration that calls `link`, and the hash tasks write
                // disjoint digest slots, so running them together is safe.
                let work = UncheckedSendable((chain, hashTask))
                DispatchQueue.concurrentPerform(iterations: hashTasks + chainTasks) { iteration in
                    if chainTasks == 1, iteration == 0 { work.value.0() } else { work.value.1(iteration - chainTasks) }
                }
            }
        }
        }
    }
}

/// Closures handed to `concurrentPerform` under the rule stated where it is used.
struct UncheckedSendable<Value>: @unchecked Sendable {
    let value: Value
    init(_ value: Value) { self.value = value }
}

/// A raw address handed to the worker threads of `ParallelPageHasher`. Each
/// thread reads its own pages of the source and writes its own slots of the
/// digest buffer, and `concurrentPerform` returns only when all are done.
struct UnsafeSendableAddress: @unchecked Sendable {
    let pointer: UnsafeRawPointer
    init(_ pointer: UnsafeRawPointer) { self.pointer = pointer }
}
