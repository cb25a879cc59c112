//! How CRIU is scheduled: its slice and its nice.
//!
//! CRIU's work is a long chain of short steps that wait on each other (our
//! requests, its parasite, its helpers' fork/exec, the restored tasks): on
//! a machine whose CPUs are all busy, each wake-up waited for a busy task's
//! slice to end. Since Linux 6.12 (EEVDF) a fair task may ask for a shorter
//! slice (`sched_setattr`, `sched_runtime`): the scheduler then lets its
//! wake-ups preempt sooner, while its share of the CPU (its weight) stays
//! what it was. CRIU is started with a 0.1 ms slice (the default here is
//! 1.4 ms): with both vCPUs kept busy, a restore took 48 ms instead of 76
//! and a checkpoint 91 instead of 106 (interleaved A/B, 30 rounds;
//! docs/performance.md, "Session 16"); on an idle machine nothing changes.
//! Configuration: `criu.short_slice`.
//!
//! The slice is inherited across fork and exec, and CRIU's restorer sets
//! each task's policy and nice (sched_setscheduler) without touching it:
//! the tasks CRIU restores get the default slice back from us at its
//! "post-restore" notification ([`default_slice_tree`]), before any of them
//! runs its own code again.
//!
//! CRIU also runs at nice −10 ([`CRIU_NICE`]; configuration `criu.nice`):
//! while it works the container is down — frozen for a dump, not yet
//! resumed on a restore — and on a machine whose CPUs are all busy CRIU
//! otherwise gets one fair share among the busy tasks. With both vCPUs
//! kept busy, a checkpoint took 68 ms instead of 102 (CRIU's own time,
//! the frozen time, 57 instead of 89) and a restore 41 instead of 46
//! (interleaved A/B, 30 rounds; docs/performance.md, "Session 17"); on an
//! idle machine nothing changes. Nice is a weight, not a real-time
//! priority: the busy tasks keep running, with a smaller share, for the
//! tens of milliseconds CRIU works. CRIU's restorer sets every restored
//! task's nice from its image (`restore_sched_info`), so the container
//! gets its own nice back, not ours. A caller that chose a nice of its own
//! (`nice -n 5 cntrlive-runtime …`) keeps it.

use std::path::Path;

/// The slice CRIU asks for: the shortest the kernel accepts is 0.1 ms.
pub const CRIU_SLICE_NS: u64 = 100_000;

/// `struct sched_attr` (include/uapi/linux/sched/types.h, SCHED_ATTR_SIZE_VER1).
#[repr(C)]
#[derive(Debug, Default, Clone, Copy)]
struct SchedAttr {
    size: u32,
    sched_policy: u32,
    sched_flags: u64,
    sched_nice: i32,
    sched_priority: u32,
    sched_runtime: u64,
    sched_deadline: u64,
    sched_period: u64,
    sched_util_min: u32,
    sched_util_max: u32,
}

const SCHED_OTHER: u32 = libc::SCHED_OTHER as u32;
const SCHED_BATCH: u32 = libc::SCHED_BATCH as u32;
const SCHED_IDLE: u32 = libc::SCHED_IDLE as u32;

fn get_attr(tid: i32) -> std::io::Result<SchedAttr> {
    let mut a = SchedAttr::default();
    let size = std::mem::size_of::<SchedAttr>() as u32;
    // SAFETY: the kernel writes at most `size` bytes into `a`.
    let r = unsafe {
        libc::syscall(
            libc::SYS_sched_getattr,
            tid,
            &mut a as *mut SchedAttr,
            size,
            0,
        )
    };
    if r != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(a)
}

fn set_attr(tid: i32, mut a: SchedAttr) -> std::io::Result<()> {
    a.size = std::mem::size_of::<SchedAttr>() as u32;
    // Utilisation clamps are kept by not asking to change them.
    a.sched_flags &= !(libc::SCHED_FLAG_UTIL_CLAMP_MIN | libc::SCHED_FLAG_UTIL_CLAMP_MAX) as u64;
    // SAFETY: `a` is a complete sched_attr of the size it says.
    let r = unsafe { libc::syscall(libc::SYS_sched_setattr, tid, &a as *const SchedAttr, 0) };
    if r != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

fn is_fair(policy: u32) -> bool {
    matches!(policy, SCHED_OTHER | SCHED_BATCH | SCHED_IDLE)
}

/// Set thread `tid`'s slice (0: the default), its policy, nice and flags
/// kept. Real-time and deadline threads have no slice: left alone.
fn set_slice(tid: i32, slice_ns: u64) -> std::io::Result<()> {
    let mut a = get_attr(tid)?;
    if !is_fair(a.sched_policy) || a.sched_runtime == slice_ns {
        return Ok(());
    }
    a.sched_runtime = slice_ns;
    set_attr(tid, a)
}

/// Give the calling thread CRIU's short slice, which the CRIU it starts
/// inherits; whether the thread has it now. A kernel without custom slices
/// (before 6.12) ignores or refuses the value for a fair task: that only
/// costs the speed-up.
pub fn short_slice_for_criu() -> bool {
    match set_slice(0, CRIU_SLICE_NS).and_then(|()| get_attr(0)) {
        Ok(a) => a.sched_runtime == CRIU_SLICE_NS,
        Err(e) => {
            tracing::debug!("CRIU keeps the default slice: {e}");
            false
        }
    }
}

/// The nice CRIU runs at unless configured otherwise (`criu.nice`).
pub const CRIU_NICE: i32 = -10;

thread_local! {
    /// [`nice_for_criu`] changed this thread's nice (from the default 0).
    static RAISED: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// The calling thread back at the default nice 0, if [`nice_for_criu`]
/// changed it (an attached restore, once the container runs, waits for it
/// at the caller's nice).
pub fn nice_back() {
    if RAISED.with(|r| r.replace(false)) {
        // SAFETY: no memory is passed.
        unsafe { libc::setpriority(libc::PRIO_PROCESS, 0, 0) };
    }
}

/// Give the calling thread (and so the CRIU it starts) the nice `nice`,
/// if the thread runs at the default nice 0 under a fair policy: a caller
/// that chose a nice keeps it, real-time threads are left alone, 0 asks
/// for nothing. Returns the nice the thread has now, if it was changed.
/// Without the privilege to raise priority (CAP_SYS_NICE) the thread
/// keeps its nice: that only costs the speed-up.
pub fn nice_for_criu(nice: i32) -> Option<i32> {
    if nice == 0 {
        return None;
    }
    let a = get_attr(0).ok()?;
    if a.sched_nice == nice {
        // Taken for an earlier CRIU of this operation (a pre-dump round,
        // a batch's next job on the same thread).
        return Some(nice);
    }
    if !is_fair(a.sched_policy) || a.sched_nice != 0 {
        return None;
    }
    // setpriority(PRIO_PROCESS, 0) is the calling thread's nice on Linux.
    // SAFETY: no memory is passed.
    if unsafe { libc::setpriority(libc::PRIO_PROCESS, 0, nice) } != 0 {
        tracing::debug!(
            "CRIU keeps the default nice: {}",
            std::io::Error::last_os_error()
        );
        return None;
    }
    RAISED.with(|r| r.set(true));
    get_attr(0)
        .ok()
        .map(|a| a.sched_nice)
        .filter(|n| *n == nice)
}

/// The scheduler's weight of a nice value (kernel/sched/core.c,
/// `sched_prio_to_weight`): nice 0 is 1024, each step ~1.25×. A v1 cgroup's
/// `cpu.shares` is the same weight for its group (default 1024).
pub fn weight_of_nice(nice: i32) -> u64 {
    const WEIGHTS: [u64; 40] = [
        88761, 71755, 56483, 46273, 36291, 29154, 23254, 18705, 14949, 11916, 9548, 7620, 6100,
        4904, 3906, 3121, 2501, 1991, 1586, 1277, 1024, 820, 655, 526, 423, 335, 272, 215, 172,
        137, 110, 87, 70, 56, 45, 36, 29, 23, 18, 15,
    ];
    WEIGHTS[(nice.clamp(-20, 19) + 20) as usize]
}

/// Every thread of the process tree rooted at `root` (its processes found
/// through `/proc/PID/task/TID/children`) back to the default slice.
/// Returns how many threads were looked at.
pub fn default_slice_tree(root: i32) -> usize {
    default_slice_tree_in(Path::new("/proc"), root)
}

fn default_slice_tree_in(proc: &Path, root: i32) -> usize {
    let mut todo = vec![root];
    let mut seen = 0;
    while let Some(pid) = todo.pop() {
        let Ok(tasks) = std::fs::read_dir(proc.join(pid.to_string()).join("task")) else {
            continue;
        };
        for t in tasks.flatten() {
            let Some(tid) = t.file_name().to_str().and_then(|s| s.parse::<i32>().ok()) else {
                continue;
            };
            seen += 1;
            if let Err(e) = set_slice(tid, 0) {
                tracing::debug!(tid, "cannot give the default slice back: {e}");
            }
            if let Ok(children) = std::fs::read_to_string(t.path().join("children")) {
                todo.extend(
                    children
                        .split_whitespace()
                        .filter_map(|c| c.parse::<i32>().ok()),
                );
            }
        }
    }
    seen
}

/// Whether a thread of ours may take the nice `nice` for CRIU (tried on
/// a scratch thread): the privilege to raise priority, and a caller at the
/// default nice.
pub fn nice_granted(nice: i32) -> bool {
    std::thread::spawn(move || nice_for_criu(nice) == Some(nice))
        .join()
        .unwrap_or(false)
}

/// Whether this kernel gives a fair thread the slice it asks for (custom
/// slices: Linux ≥ 6.12), tried on a scratch thread.
pub fn short_slice_supported() -> bool {
    std::thread::spawn(|| {
        short_slice_for_criu() && thread_slice().is_none_or(|s| s == CRIU_SLICE_NS)
    })
    .join()
    .unwrap_or(false)
}

/// `se.slice` of the calling thread, where the kernel shows it.
fn thread_slice() -> Option<u64> {
    slice_in("/proc/thread-self/sched")
}

/// `se.slice` from a `/proc/…/sched` file (what the scheduler uses).
fn slice_in(sched_file: &str) -> Option<u64> {
    let text = std::fs::read_to_string(sched_file).ok()?;
    text.lines()
        .find(|l| l.starts_with("se.slice"))?
        .split(':')
        .nth(1)?
        .trim()
        .parse()
        .ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn proc_slice(tid: i32) -> Option<u64> {
        slice_in(&format!("/proc/{tid}/sched"))
    }

    fn gettid() -> i32 {
        // SAFETY: no arguments, no memory.
        unsafe { libc::syscall(libc::SYS_gettid) as i32 }
    }

    fn thread_nice() -> i32 {
        get_attr(0).unwrap().sched_nice
    }

    #[test]
    fn weights_of_nice_are_the_kernels() {
        assert_eq!(weight_of_nice(0), 1024);
        assert_eq!(weight_of_nice(CRIU_NICE), 9548);
        assert_eq!(weight_of_nice(-20), 88761);
        assert_eq!(weight_of_nice(19), 15);
        assert_eq!(weight_of_nice(-99), 88761);
    }

    #[test]
    fn criu_nice_is_taken_from_the_default_inherited_and_never_overrides_a_chosen_one() {
        std::thread::spawn(|| {
            assert_eq!(thread_nice(), 0);
            assert_eq!(nice_for_criu(0), None, "0 asks for nothing");
            assert_eq!(thread_nice(), 0);
            // Root (the tests run as root) may raise priority.
            assert_eq!(nice_for_criu(CRIU_NICE), Some(CRIU_NICE));
            assert_eq!(thread_nice(), CRIU_NICE);
            // Asked again (the next CRIU of the operation): still granted.
            assert_eq!(nice_for_criu(CRIU_NICE), Some(CRIU_NICE));
            // A child (as CRIU is) inherits it.
            let mut child = std::process::Command::new("sleep")
                .arg("5")
                .spawn()
                .unwrap();
            let stat = std::fs::read_to_string(format!("/proc/{}/stat", child.id())).unwrap();
            let after_comm = stat.rsplit_once(')').unwrap().1;
            // Field 19 of /proc/PID/stat is nice; after "comm)" it is the 17th.
            let nice: i32 = after_comm
                .split_whitespace()
                .nth(16)
                .unwrap()
                .parse()
                .unwrap();
            let _ = child.kill();
            let _ = child.wait();
            assert_eq!(nice, CRIU_NICE);
            nice_back();
            assert_eq!(thread_nice(), 0);
        })
        .join()
        .unwrap();
        std::thread::spawn(|| {
            // A nice the caller chose (here 3) is kept.
            // SAFETY: no memory is passed.
            assert_eq!(unsafe { libc::setpriority(libc::PRIO_PROCESS, 0, 3) }, 0);
            assert_eq!(nice_for_criu(CRIU_NICE), None);
            assert_eq!(thread_nice(), 3);
            nice_back();
            assert_eq!(thread_nice(), 3, "not ours to give back");
        })
        .join()
        .unwrap();
    }

    #[test]
    fn the_short_slice_is_inherited_and_a_tree_gets_the_default_back() {
        std::thread::spawn(|| {
            let tid = gettid();
            let (true, Some(default)) = (short_slice_supported(), proc_slice(tid)) else {
                // A kernel before 6.12: CRIU keeps the default slice there
                // (short_slice_for_criu fails quietly), nothing to check.
                eprintln!("this kernel has no custom slices: the slice is not checked");
                return;
            };
            assert!(short_slice_for_criu());
            assert_eq!(proc_slice(tid), Some(CRIU_SLICE_NS));
            // A child (as CRIU is) inherits it; the tree walk resets it.
            let mut child = std::process::Command::new("sleep")
                .arg("5")
                .spawn()
                .unwrap();
            let pid = child.id() as i32;
            assert_eq!(proc_slice(pid), Some(CRIU_SLICE_NS));
            assert_eq!(default_slice_tree(pid), 1);
            assert_eq!(proc_slice(pid), Some(default));
            child.kill().unwrap();
            child.wait().unwrap();
        })
        .join()
        .unwrap();
    }
}
