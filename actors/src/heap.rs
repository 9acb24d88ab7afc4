//! The process's heap policy: the forward pass allocates and frees buffers of megabytes per
//! layer (a prompt chunk's activations, gate/up outputs, attention scratch). glibc's
//! defaults serve those from fresh `mmap`s, or trim them from the heap's top when freed, so
//! every layer faulted its buffers' pages in again and unmapping them sent TLB shootdowns to
//! the compute threads: 6-7% of a 512-token prompt's time in the kernel (`perf`, small IQ1_S
//! file, two threads), pp512 2630-2750 -> 2930-2970 t/s with the limits below.

/// Allocations of at least this many bytes get their own `mmap` (glibc's default is 128 KiB
/// and grows only as such blocks are freed): the packed weights of a whole tensor still do,
/// so dropping a model returns them to the system.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
const MMAP_THRESHOLD_BYTES: i32 = 64 << 20;

/// Free bytes the heap's top keeps before glibc returns them (default 128 KiB).
#[cfg(all(target_os = "linux", target_env = "gnu"))]
const TRIM_THRESHOLD_BYTES: i32 = 64 << 20;

/// Applies the limits above (glibc only; elsewhere the allocator's defaults stay). Call
/// first in `main`, before any thread starts.
pub fn keep_transient_buffers() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: `mallopt` only changes allocator parameters; no thread allocates yet.
    unsafe {
        // A refused value keeps glibc's default: slower, never wrong, so not an error.
        libc::mallopt(libc::M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES);
        libc::mallopt(libc::M_TRIM_THRESHOLD, TRIM_THRESHOLD_BYTES);
    }
}
