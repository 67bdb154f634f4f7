//! `job-runner`: Ferry's runner and its tools (see [`ferry_runner::cli`]).

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    bound_allocator_footprint();
    ferry_runner::cli::main(ferry_runner::cli::Cli::parse())
}

/// Buffers above this size get their own mapping, returned to the system when
/// freed.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
const MMAP_THRESHOLD: libc::c_int = 128 * 1024;

/// Keeps the runner's resident memory close to the data really in flight.
///
/// glibc raises its mmap threshold to the size of each mapped block that is
/// freed (up to 32 MiB). After the first 8 MiB part is uploaded, every 1 to
/// 8 MiB transfer buffer comes from the per-thread heaps instead, and freed
/// space in the middle of a heap stays resident: on a 4 GiB object that was
/// 30 to 50 MiB above the live heap. Setting the threshold explicitly turns
/// that adjustment off.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn bound_allocator_footprint() {
    // SAFETY: mallopt only sets a malloc parameter; it is called before any
    // other thread exists, and takes no pointers.
    #[allow(unsafe_code)]
    let ok = unsafe { libc::mallopt(libc::M_MMAP_THRESHOLD, MMAP_THRESHOLD) };
    if ok != 1 {
        eprintln!("job-runner: warning: could not set the allocator's mmap threshold");
    }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn bound_allocator_footprint() {}
