//! The process's memory, as Linux reports it in `/proc/self/status`:
//! `VmRSS` (resident now) and `VmHWM` (the peak so far). Stages write them
//! into stats.json, so the report can show what an instance needed. Where
//! several instances run at once in one process the peak is theirs
//! together; `--jobs 1` measures one.

/// Resident memory now, in bytes (`None` off Linux).
pub fn rss_bytes() -> Option<u64> {
    status_kb("VmRSS:").map(|kb| kb * 1024)
}

/// The process's peak resident memory so far, in bytes (`None` off Linux).
pub fn peak_rss_bytes() -> Option<u64> {
    status_kb("VmHWM:").map(|kb| kb * 1024)
}

/// What gives back memory the process holds but does not use: the
/// binary's allocator registers it ([`on_release`]); none in tests and
/// libraries.
static RELEASE: std::sync::OnceLock<fn()> = std::sync::OnceLock::new();

/// Registers how the process's allocator gives back freed memory it keeps
/// for reuse (once; later calls are ignored).
pub fn on_release(release: fn()) {
    let _ = RELEASE.set(release);
}

/// Gives back what the allocator keeps of freed memory, so what is
/// resident is what is in use. Then [`reset_peak`] starts an instance's
/// peak from that, not from what an earlier one (or the plan) freed.
pub fn release_freed() {
    if let Some(release) = RELEASE.get() {
        release();
    }
}

/// Starts the peak over from what is resident now (Linux ≥ 4.0:
/// `/proc/self/clear_refs`), so the next peak is one instance's own. False
/// where that is not possible.
pub fn reset_peak() -> bool {
    std::fs::write("/proc/self/clear_refs", "5").is_ok()
}

fn status_kb(field: &str) -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with(field))?;
    line[field.len()..].trim().trim_end_matches("kB").trim().parse().ok()
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_peak_is_at_least_what_is_resident() {
        let (now, peak) = (super::rss_bytes().unwrap(), super::peak_rss_bytes().unwrap());
        assert!(now > 0 && peak >= now, "{now} {peak}");
    }

    #[test]
    fn a_reset_peak_forgets_what_was_freed() {
        let big = vec![1u8; 256 << 20];
        std::hint::black_box(&big);
        drop(big);
        let before = super::peak_rss_bytes().unwrap();
        assert!(super::reset_peak());
        let after = super::peak_rss_bytes().unwrap();
        assert!(after + (128 << 20) < before, "{before} → {after}");
    }
}
