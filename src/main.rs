//! The `clipit` command-line tool.

mod cli;

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    keep_freed_memory();
    let args = cli::Cli::parse();
    match cli::run(args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Keeps the memory that freed tensors held in the process (glibc's allocator), instead of giving
/// it back to the system after every operation.
///
/// With glibc's defaults, tensors of more than about 128 kB are mapped and unmapped on every
/// allocation: each CPU operation then pays page faults, zeroing by the kernel and TLB shootdowns
/// between the rayon threads (about 8 % of a ViT-B/32 embedding's CPU samples, BENCHMARKS.md).
/// Raising the mmap threshold to glibc's maximum (32 MiB) and never trimming the heap reuses the
/// same pages instead: 13.8 → 16.0 images/s for that embedding on 2 cores. The peak resident
/// memory is unchanged. Called once at start; a no-op on other C libraries (the library itself keeps
/// `#![forbid(unsafe_code)]`).
fn keep_freed_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        extern "C" {
            fn mallopt(param: std::ffi::c_int, value: std::ffi::c_int) -> std::ffi::c_int;
        }
        const M_TRIM_THRESHOLD: std::ffi::c_int = -1;
        const M_TOP_PAD: std::ffi::c_int = -2;
        const M_MMAP_THRESHOLD: std::ffi::c_int = -3;
        // SAFETY: mallopt only changes the allocator's parameters; any value is accepted or
        // refused (returning 0), never unsafe.
        unsafe {
            mallopt(M_MMAP_THRESHOLD, 32 << 20);
            mallopt(M_TRIM_THRESHOLD, i32::MAX);
            mallopt(M_TOP_PAD, 64 << 20);
        }
    }
}
