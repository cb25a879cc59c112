//! CRIU's log, for people: the `Error` lines with the lines before them,
//! the log's path (the log is kept), and a hint for failures we know.

use std::path::{Path, PathBuf};

/// Lines of context quoted before each error line.
const CONTEXT: usize = 2;
/// At most this many error lines are quoted.
const MAX_ERRORS: usize = 6;

/// Known failure signatures → what to do. Matched case-insensitively.
pub const HINTS: &[(&[&str], &str)] = &[
    (&["can't get 1:16 opt"], "CRIU < 4.2 cannot dump INET sockets on kernels >= 6.16 (CRIU issues #2705/#2718): use CRIU 4.2.1 (hack/install.sh builds it)"),
    (&["unable to freeze"], "a task did not freeze in time, often one in uninterruptible sleep (D state, e.g. blocked on NFS or a FUSE mount); retry when it is idle"),
    (&["timeout reached. try to interrupt"], "a task did not freeze in time, often one in uninterruptible sleep (D state); retry when it is idle"),
    (&["cpuset", "no space left on device"], "the cpuset cgroup has no cpus/mems (ENOSPC): restore with --manage-cgroups-mode ignore, or make sure the target cpuset is populated"),
    (&["iptables-restore"], "CRIU's network lock runs iptables-restore: install iptables (hack/install.sh does)"),
    (&["can't lookup mount"], "a file descriptor points to a file on a mount CRIU cannot see (e.g. the container's stdout redirected to a host file): give the container pipes, as containerd does"),
    (&["lazy-pages", "connect"], "the lazy-pages daemon's socket is missing: start the lazy-pages daemon (restore --lazy-pages) before the restore"),
    (&["mem_dirty_track"], "this kernel cannot track dirty memory (CONFIG_MEM_SOFT_DIRTY is not set): pre-dump is not possible; use lazy pages instead"),
    (&["soft-dirty"], "this kernel cannot track dirty memory (CONFIG_MEM_SOFT_DIRTY is not set): pre-dump is not possible; use lazy pages instead"),
    (&["splice", "bad file descriptor"], "CRIU's page pipe could not be sized: raise /proc/sys/fs/pipe-max-size to 8388608"),
    (&["f_setpipe_sz"], "CRIU's page pipe could not be sized: raise /proc/sys/fs/pipe-max-size to 8388608"),
];

#[derive(Debug, Clone)]
pub struct LogExcerpt {
    pub path: PathBuf,
    pub quoted: Vec<String>,
    pub hints: Vec<&'static str>,
}

impl LogExcerpt {
    /// Read the log; `None` when it does not exist.
    pub fn read(path: &Path) -> Option<LogExcerpt> {
        let text = std::fs::read_to_string(path).ok()?;
        Some(Self::from_text(path, &text))
    }

    pub fn from_text(path: &Path, text: &str) -> LogExcerpt {
        let lines: Vec<&str> = text.lines().collect();
        let mut picked = std::collections::BTreeSet::new();
        let mut errors = 0;
        for (i, l) in lines.iter().enumerate() {
            if is_error(l) {
                errors += 1;
                if errors > MAX_ERRORS {
                    break;
                }
                for j in i.saturating_sub(CONTEXT)..=i {
                    picked.insert(j);
                }
            }
        }
        let mut quoted = Vec::new();
        let mut last = None;
        for i in picked {
            if let Some(prev) = last {
                if i > prev + 1 {
                    quoted.push("…".to_string());
                }
            }
            quoted.push(lines[i].trim_end().to_string());
            last = Some(i);
        }
        let lower = text.to_ascii_lowercase();
        let mut hints = Vec::new();
        for (needles, hint) in HINTS {
            if needles.iter().all(|n| lower.contains(n)) && !hints.contains(hint) {
                hints.push(*hint);
            }
        }
        LogExcerpt {
            path: path.to_path_buf(),
            quoted,
            hints,
        }
    }

    /// The first error CRIU logged, without its timestamp and source
    /// location: the one line a daemon shows when it keeps only the first
    /// line of our message (dockerd and containerd do).
    pub fn headline(&self) -> Option<String> {
        let l = self.quoted.iter().find(|l| is_error(l))?;
        let rest = match l.find("Error (") {
            Some(i) => l[i..].split_once("): ").map(|(_, m)| m).unwrap_or(&l[i..]),
            None => l.split_once(") ").map(|(_, m)| m).unwrap_or(l),
        };
        Some(rest.trim().to_string())
    }

    /// The text appended to an error message.
    pub fn render(&self) -> String {
        let mut s = String::new();
        if !self.quoted.is_empty() {
            s.push_str("\nCRIU's log says:\n");
            for l in &self.quoted {
                s.push_str("    ");
                s.push_str(l);
                s.push('\n');
            }
        }
        for h in &self.hints {
            s.push_str(&format!("hint: {h}\n"));
        }
        s.push_str(&format!("full log: {}", self.path.display()));
        s
    }
}

/// Error lines CRIU prints on every run here that change nothing: this
/// sandbox withholds CAP_SYS_RESOURCE (docs/environment.md).
const HARMLESS: &[&str] = &["Can't setup RLIMIT_NOFILE for self"];

/// A line CRIU reports as an error that changes nothing here.
pub fn is_harmless(line: &str) -> bool {
    HARMLESS.iter().any(|h| line.contains(h))
}

/// CRIU marks errors with "Error" (pr_err) and its BUG() with "BUG".
fn is_error(line: &str) -> bool {
    (line.contains("Error (")
        || line.contains("Error:")
        || line.contains(" BUG ")
        || line.starts_with("Error"))
        && !is_harmless(line)
}

#[cfg(test)]
mod tests {
    use super::*;

    const LOG: &str = "(00.001) Version: 4.2.1\n(00.002) Dumping task 42\n(00.003) Seizing 42\n(00.010) Error (criu/files-reg.c:1710): Can't lookup mount=123 for fd=1 path=/out.txt\n(00.011) Error (criu/cr-dump.c:1800): Dump files (pid: 42) failed with -1\n(00.012) Unfreezing tasks into 1\n";

    #[test]
    fn quotes_errors_with_context_ok() {
        let e = LogExcerpt::from_text(Path::new("/w/dump.log"), LOG);
        assert_eq!(e.quoted.len(), 4, "{:?}", e.quoted);
        assert!(e.quoted[0].contains("Dumping task"));
        assert!(e.quoted.last().unwrap().contains("failed with -1"));
        assert_eq!(e.hints.len(), 1);
        assert_eq!(
            e.headline().as_deref(),
            Some("Can't lookup mount=123 for fd=1 path=/out.txt")
        );
        let r = e.render();
        assert!(
            r.contains("full log: /w/dump.log") && r.contains("hint: a file descriptor"),
            "{r}"
        );
    }

    #[test]
    fn harmless_rlimit_line_is_not_quoted_ok() {
        let log = "(00.001) Error (criu/util.c:1534): rlimit: Can't setup RLIMIT_NOFILE for self: Operation not permitted\n";
        assert!(LogExcerpt::from_text(Path::new("/l"), log)
            .quoted
            .is_empty());
    }

    #[test]
    fn no_errors_still_gives_path_ok() {
        let e = LogExcerpt::from_text(Path::new("/w/dump.log"), "(00.001) fine\n");
        assert!(e.quoted.is_empty() && e.hints.is_empty());
        assert!(e.render().ends_with("/w/dump.log"));
    }
}
