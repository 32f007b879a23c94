//! glibc's malloc, tuned for training steps. libtorch allocates every activation and gradient
//! with `malloc`; by default glibc hands blocks above its (dynamic) mmap threshold back to the
//! kernel when they are freed, and trims the heap's free top, so the next step's tensors of the
//! same sizes are mapped again and the kernel zeroes every page on first touch: about 70,000
//! page faults in each ViT-B/16 training step at batch 8 (`dka bench steps` logs them per
//! step). Keeping freed memory in the heap (mmap only above 32 MiB, the largest threshold glibc
//! accepts; trim only above 1 GiB of free top) lets the next step reuse it. The process keeps
//! its peak footprint instead of shrinking between steps.
//!
//! Transparent huge pages: libtorch's CPU allocator asks the kernel for them
//! (`madvise(MADV_HUGEPAGE)`) on tensors of 2 MiB and more when `THP_MEM_ALLOC_ENABLE=1`; the
//! tuning sets it unless the environment already has it (kernels in THP `madvise` mode give
//! none otherwise). `dka bench steps`, ViT-B/16 at batch 8 on a 2-core AMD EPYC, interleaved
//! rounds, both implementations with and without it (two pairs of runs): our DKA d̂ 192 step
//! 3,969 / 4,154 ms with it against 4,329 / 4,391 ms without, the Adapter d192 step within the
//! machine's noise (3,845 / 3,951 against 3,701 / 4,026 ms).
//!
//! Any `MALLOC_*` variable in the environment (`MALLOC_MMAP_THRESHOLD_`,
//! `MALLOC_TRIM_THRESHOLD_`, ...) or `DKA_MALLOC=default` leaves glibc and libtorch's allocator
//! as they are.

/// Applies the tuning (once, at start-up, before libtorch allocates); returns whether it did.
pub fn tune() -> bool {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        let user_set = std::env::vars_os().any(|(k, _)| {
            k.to_str()
                .is_some_and(|k| k.starts_with("MALLOC_") && k.ends_with('_'))
        });
        if user_set || std::env::var("DKA_MALLOC").is_ok_and(|v| v == "default") {
            return false;
        }
        if std::env::var_os("THP_MEM_ALLOC_ENABLE").is_none() {
            // Read by libtorch at its first allocation; children (a grid's workers, the
            // bench's reference) inherit it. Single-threaded here, at start-up.
            std::env::set_var("THP_MEM_ALLOC_ENABLE", "1");
        }
        // SAFETY: mallopt only sets glibc's allocator parameters; called before any thread
        // that allocates through libtorch exists.
        unsafe {
            let a = libc::mallopt(libc::M_MMAP_THRESHOLD, 32 << 20);
            let b = libc::mallopt(libc::M_TRIM_THRESHOLD, 1 << 30);
            a == 1 && b == 1
        }
    }
    #[cfg(not(all(target_os = "linux", target_env = "gnu")))]
    {
        false
    }
}

#[cfg(test)]
mod tests {
    /// A freed 8 MiB block comes back without new page faults once tuned (glibc's default
    /// would unmap it: 8 MiB is above the initial 128 KiB mmap threshold).
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    #[test]
    fn a_freed_block_is_reused_without_page_faults() {
        if !super::tune() {
            eprintln!("skipped: MALLOC_* set in the environment");
            return;
        }
        let touch = || {
            let mut v = vec![1u8; 8 << 20];
            v[12345] = 2;
            std::hint::black_box(&v);
        };
        touch();
        let before = crate::util::device::minor_faults().unwrap();
        touch();
        let faults = crate::util::device::minor_faults().unwrap() - before;
        // 8 MiB is 2,048 pages; other test threads may fault a little meanwhile.
        assert!(
            faults < 512,
            "{faults} page faults reusing a freed 8 MiB block"
        );
    }
}
