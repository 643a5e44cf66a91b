//! Per-CPU one-second windows, for the RSTs and the drop samples (`RATE_SLOT_*`).

use aya_ebpf::helpers::bpf_ktime_get_coarse_ns;

use crate::maps::RATE_WINDOWS;

const NS_PER_SEC: u64 = 1_000_000_000;

/// Takes one token from this CPU's one-second window in `slot`; false when it is spent.
/// The coarse clock (jiffies) is plenty for a one-second window and cheaper per call.
#[inline(always)]
pub fn within_rate(slot: u32, per_sec: u32) -> bool {
    let Some(window) = RATE_WINDOWS.get_ptr_mut(slot) else {
        return false;
    };
    // SAFETY: this CPU's slot of a per-CPU array; XDP runs with preemption off.
    let window = unsafe { &mut *window };
    // SAFETY: bpf_ktime_get_coarse_ns has no preconditions.
    let now = unsafe { bpf_ktime_get_coarse_ns() };
    if now.wrapping_sub(window.window_start_ns) >= NS_PER_SEC {
        window.window_start_ns = now;
        window.sent = 0;
    }
    if window.sent >= u64::from(per_sec) {
        return false;
    }
    window.sent += 1;
    true
}
