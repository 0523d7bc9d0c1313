//! The system allocator, asking the kernel for transparent huge pages on large blocks.
//!
//! A join allocates a few hundred MB of arrays per partition. With 4 KiB pages every first
//! touch is a page fault that zeroes a page; on the machines Quiver is measured on, those
//! faults were a third of a join's CPU time. Where THP is in `madvise` mode (the common
//! default), `MADV_HUGEPAGE` on blocks of 4 MiB and more makes them fault 2 MiB at a time.

use std::alloc::{GlobalAlloc, Layout, System};

pub struct HugePageAlloc;

/// Tune glibc's malloc for a join's lifetime: arrays up to 32 MiB from the heap rather than
/// fresh zeroed mappings each time, and heaps that keep their free top, so freed memory is
/// reused. The arenas stay per thread: with one arena shared by the scan, sweep and writer
/// threads, a W1 join blocked on its lock 6 500 times (52 000 times under a 128 MB pool) and
/// ran 5–20 % slower, for 50 MB less peak memory.
pub fn tune() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only changes allocator parameters; called first thing in main, before
    // any thread exists.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 32 << 20);
        // Setting the mmap threshold leaves the trim threshold at 128 KiB: the heap's top was
        // handed back to the kernel whenever a batch was freed and faulted in again (zeroed
        // page by page) by the next. Keep freed memory for reuse within a join, grow the heap
        // in 64 MiB steps, and give memory back only at the explicit `trim`.
        libc::mallopt(libc::M_TRIM_THRESHOLD, 256 << 20);
        libc::mallopt(libc::M_TOP_PAD, 64 << 20);
    }
}

/// Return the heap's free pages to the kernel: after a sweep, the packed events' memory is
/// free but scattered in small chunks that the gathered result columns cannot reuse.
pub fn trim() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only releases free memory; it is thread-safe.
    unsafe {
        libc::malloc_trim(0);
    }
}

const LARGE: usize = 4 << 20;

fn advise(ptr: *mut u8, size: usize) {
    if size < LARGE || ptr.is_null() {
        return;
    }
    let page = 4096usize;
    let start = (ptr as usize).div_ceil(page) * page;
    let end = (ptr as usize + size) / page * page;
    if end > start {
        // SAFETY: [start, end) lies inside the block just allocated; madvise only changes
        // how the kernel backs those pages and never their contents. Failure is harmless.
        unsafe {
            libc::madvise(start as *mut libc::c_void, end - start, libc::MADV_HUGEPAGE);
        }
    }
}

// SAFETY: every call forwards to `System` with the same arguments; `advise` does not touch
// the memory's contents.
unsafe impl GlobalAlloc for HugePageAlloc {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let p = unsafe { System.alloc(layout) };
        advise(p, layout.size());
        p
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        let p = unsafe { System.alloc_zeroed(layout) };
        advise(p, layout.size());
        p
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let p = unsafe { System.realloc(ptr, layout, new_size) };
        advise(p, new_size);
        p
    }
}
