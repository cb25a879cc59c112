//! Waiting for the kernel to finish something it reports by polling only
//! (a v1 freezer's state, a cgroup whose last task is exiting).

use std::time::Duration;

/// Sleeps of 100 µs, 200 µs, 400 µs … up to `max` each.
///
/// Started at 1 ms, the first sleep was most of the wait: a busybox
/// container freezes, and its killed task leaves its cgroup, within a few
/// hundred µs here, so a 1 ms first step made half of a freeze or a removal
/// sleep (docs/performance.md).
pub struct Backoff {
    next: Duration,
    max: Duration,
}

impl Backoff {
    pub fn new(max: Duration) -> Backoff {
        Backoff {
            next: Duration::from_micros(100),
            max,
        }
    }

    /// Sleep for the next step; returns how long it slept.
    pub fn sleep(&mut self) -> Duration {
        let d = self.next;
        std::thread::sleep(d);
        self.next = (d * 2).min(self.max);
        d
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn doubles_from_100us_up_to_max() {
        let mut b = Backoff::new(Duration::from_micros(500));
        let steps: Vec<_> = (0..5).map(|_| b.sleep().as_micros()).collect();
        assert_eq!(steps, [100, 200, 400, 500, 500]);
    }
}
