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

/// The manifest note a stage on a GPU records its device's peak under
/// (`DevicePeak::note` in babelflow-model).
pub const DEVICE_PEAK_NOTE: &str = "device_peak_bytes";

/// A finished instance's measured peak memory, where its work lived.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MeasuredPeak {
    pub bytes: u64,
    /// On a GPU: the device allocator's peak (`DevicePeak`), not host RAM.
    pub on_device: bool,
}

/// The peak memory an instance's manifest records for the device its work
/// ran on: a GPU's own peak (`notes.device_peak_bytes`) where it ran on a
/// GPU, else the process's resident peak (`peak_rss_bytes`). `None` for a
/// GPU instance that recorded no device peak: its host memory is not its
/// device's and is never given in its place (an estimate of device memory
/// checked against host RAM, or priced by it, would be silently wrong).
pub fn measured_peak(manifest: &serde_json::Value) -> Option<MeasuredPeak> {
    let notes = &manifest["notes"];
    if let Some(bytes) = notes[DEVICE_PEAK_NOTE].as_u64() {
        return Some(MeasuredPeak { bytes, on_device: true });
    }
    // Model stages note the backend they ran on; the rest run on the CPU.
    let on_gpu = notes["backend"].as_str().is_some_and(|b| !b.starts_with("cpu"));
    if on_gpu {
        return None;
    }
    manifest["peak_rss_bytes"].as_u64().map(|bytes| MeasuredPeak {
        bytes,
        on_device: false,
    })
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
    fn a_gpu_instances_peak_is_its_devices_never_its_host_memory() {
        use super::{measured_peak, MeasuredPeak};
        let cpu = serde_json::json!({"peak_rss_bytes": 100, "notes": {"backend": "cpu (flex)"}});
        assert_eq!(
            measured_peak(&cpu),
            Some(MeasuredPeak {
                bytes: 100,
                on_device: false
            })
        );
        let tokenize = serde_json::json!({"peak_rss_bytes": 7, "notes": {"rows": 3}});
        assert_eq!(
            measured_peak(&tokenize),
            Some(MeasuredPeak {
                bytes: 7,
                on_device: false
            })
        );
        let gpu =
            serde_json::json!({"peak_rss_bytes": 100, "notes": {"backend": "vulkan:0", "device_peak_bytes": 5000}});
        assert_eq!(
            measured_peak(&gpu),
            Some(MeasuredPeak {
                bytes: 5000,
                on_device: true
            })
        );
        let gpu_unmeasured = serde_json::json!({"peak_rss_bytes": 100, "notes": {"backend": "vulkan:0"}});
        assert_eq!(measured_peak(&gpu_unmeasured), None);
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
