//! Giving freed memory back to the OS after a big table grew.
//!
//! When a hash table grows, its old bucket array is freed at once: at a million channels
//! that is tens of megabytes per shard. mimalloc keeps freed memory resident for a
//! while (its purge delay) and purges only when the thread allocates or frees again
//! later, so a shard that goes quiet right after a growth would keep the old array
//! resident indefinitely (seen as RSS per channel varying by 100 B between runs of the
//! same million-channel load). One forced collection at each growth of a big table
//! gives it back; growths double the table, so there are a handful in a node's life.
#![allow(unsafe_code)]

/// Tables of at least this many entries collect after they grow.
pub const COLLECT_FROM_CAPACITY: usize = 1 << 14;

/// Returns to the OS what this thread's allocator holds freed.
pub fn give_back_freed() {
    // SAFETY: mi_collect takes no arguments that point anywhere; it walks the calling
    // thread's own mimalloc heap (and the shared arenas, under their locks) and may be
    // called at any time. Where mimalloc is not the global allocator it only sweeps
    // mimalloc's own, unused heap.
    unsafe { libmimalloc_sys::mi_collect(true) }
}
