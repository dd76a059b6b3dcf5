//! Keeping the daemon small: how glibc's allocator is told to behave in a process that
//! serves requests on a few short-lived threads.
//!
//! Measured with `benches/daemon_rss.rs` (10,000 mixed requests, four clients at once),
//! the resident set grew by some 4 MiB over the idle daemon's, mostly heap that glibc
//! kept and did not give back:
//!
//! - Each thread that allocates gets an arena of its own (up to eight per core), and the
//!   blocking pool starts and retires threads as load comes and goes, so freed memory was
//!   spread over several arenas that each kept their share. One arena serves all: the
//!   daemon's few threads rarely allocate at the same moment, so there is no contention
//!   to speak of (`M_ARENA_MAX` = 1).
//! - An answer's buffers (a host listing's JSON is tens of kilobytes and grows by
//!   doubling) are above the mmap threshold at first, but glibc raises that threshold each
//!   time such a block is freed, after which they come from the heap and fragment it.
//!   A fixed threshold keeps them mapped and unmapped on free (`M_MMAP_THRESHOLD`, which
//!   also turns the raising off).
//! - What a request freed inside the heap stays resident until the top of the heap is
//!   free; after each request the pages of free chunks are handed back (`malloc_trim`,
//!   which since glibc 2.8 also releases free pages in the middle of the heap). It walks
//!   only the free lists of a heap of a few hundred kilobytes: microseconds a request.
//!
//! Other C libraries have other allocators; there these calls do not exist and nothing is
//! tuned.

/// The most threads the blocking pool runs at once; more requests at a time wait.
pub const BLOCKING_THREADS: usize = 4;

/// Blocks this large or larger are mapped on their own and unmapped when freed.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
const MMAP_THRESHOLD: libc::c_int = 64 * 1024;

/// Tunes the allocator for the daemon; call once, before any thread starts.
pub fn tune() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        // SAFETY: mallopt only sets allocator parameters; it is called before the
        // runtime starts any thread, and a refused setting (return 0) leaves the default.
        let arenas = unsafe { libc::mallopt(libc::M_ARENA_MAX, 1) };
        // SAFETY: as above.
        let mmap = unsafe { libc::mallopt(libc::M_MMAP_THRESHOLD, MMAP_THRESHOLD) };
        if arenas == 0 || mmap == 0 {
            tracing::debug!(arenas, mmap, "the allocator refused a setting");
        }
    }
}

/// Gives the pages of freed memory back to the kernel; call when a request is done.
pub fn release() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        // SAFETY: malloc_trim takes the arena locks itself and may be called from any
        // thread at any time; 0 keeps no extra padding at the top of the heap.
        unsafe { libc::malloc_trim(0) };
    }
}
