//! Go-style argument compatibility.
//!
//! runc parses flags with Go's `flag` package (through urfave/cli), which
//! takes `-name` and `--name` alike; containerd relies on it and sends
//! `restore … -no-subreaper …`. clap only knows `--name`, so before parsing
//! we rewrite every single-dash token whose name is a long flag of the
//! command being parsed (or a global flag) into its double-dash form.
//!
//! Like Go's parser we stop at `--` and at the first positional argument of
//! the subcommand, so `exec ID ls -la` and `ps ID -ef` reach the container
//! untouched.

use std::collections::HashMap;
use std::ffi::OsString;

use clap::Command;

/// What we need to know about a long flag while scanning.
#[derive(Clone, Copy)]
struct FlagInfo {
    takes_value: bool,
}

fn long_flags(cmd: &Command, out: &mut HashMap<String, FlagInfo>) {
    for arg in cmd.get_arguments() {
        let takes_value = arg.get_action().takes_values();
        if let Some(long) = arg.get_long() {
            out.insert(long.to_string(), FlagInfo { takes_value });
        }
        for alias in arg.get_all_aliases().unwrap_or_default() {
            out.insert(alias.to_string(), FlagInfo { takes_value });
        }
    }
}

fn short_takes_value(cmd: &Command, root: &Command, c: char) -> bool {
    cmd.get_arguments()
        .chain(root.get_arguments())
        .find(|a| a.get_short() == Some(c))
        .map(|a| a.get_action().takes_values())
        .unwrap_or(false)
}

/// Rewrite `-long-flag[=v]` into `--long-flag[=v]` where `long-flag` is a
/// known long flag. `args[0]` is the program name and is kept.
pub fn normalize(args: Vec<OsString>, root: &Command) -> Vec<OsString> {
    let mut out = Vec::with_capacity(args.len());
    let mut iter = args.into_iter();
    if let Some(prog) = iter.next() {
        out.push(prog);
    }

    let mut globals = HashMap::new();
    long_flags(root, &mut globals);
    let mut current: Option<Command> = None;
    let mut flags = globals.clone();

    while let Some(tok) = iter.next() {
        let Some(s) = tok.to_str().map(str::to_owned) else {
            out.push(tok);
            continue;
        };
        if s == "--" {
            out.push(tok);
            out.extend(iter);
            break;
        }
        if let Some(body) = s.strip_prefix("--") {
            let name = body.split('=').next().unwrap_or(body);
            let needs_value =
                !body.contains('=') && flags.get(name).map(|f| f.takes_value).unwrap_or(false);
            out.push(tok);
            if needs_value {
                if let Some(v) = iter.next() {
                    out.push(v);
                }
            }
            continue;
        }
        if let Some(body) = s.strip_prefix('-') {
            if body.is_empty() {
                out.push(tok);
                continue;
            }
            let name = body.split('=').next().unwrap_or(body);
            if name.chars().count() > 1 {
                if let Some(info) = flags.get(name).copied() {
                    out.push(OsString::from(format!("-{s}")));
                    if info.takes_value && !body.contains('=') {
                        if let Some(v) = iter.next() {
                            out.push(v);
                        }
                    }
                    continue;
                }
            }
            // A short flag (or a cluster); `-b DIR` takes the next token.
            let cmd = current.as_ref().unwrap_or(root);
            let last = body.chars().last().unwrap_or('-');
            let needs_value = body.chars().count() == 1 && short_takes_value(cmd, root, last);
            out.push(tok);
            if needs_value {
                if let Some(v) = iter.next() {
                    out.push(v);
                }
            }
            continue;
        }
        // A positional argument.
        match current {
            None => {
                if let Some(sub) = root
                    .get_subcommands()
                    .find(|c| c.get_name() == s || c.get_all_aliases().any(|a| a == s))
                {
                    // A subcommand's own arguments are added when it is
                    // built (cli::Lazy): build a copy of it to see them.
                    let mut sub = sub.clone();
                    sub.build();
                    flags = globals.clone();
                    long_flags(&sub, &mut flags);
                    current = Some(sub);
                    out.push(tok);
                } else {
                    out.push(tok);
                    out.extend(iter);
                    break;
                }
            }
            Some(_) => {
                // First positional of the subcommand: flags end here, as in Go.
                out.push(tok);
                out.extend(iter);
                break;
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cli::Cli;
    use clap::CommandFactory;

    fn norm(args: &[&str]) -> Vec<String> {
        normalize(args.iter().map(OsString::from).collect(), &Cli::command())
            .into_iter()
            .map(|s| s.into_string().unwrap())
            .collect()
    }

    #[test]
    fn containerd_restore_single_dash_ok() {
        let got = norm(&[
            "rt",
            "--root",
            "/run/x",
            "restore",
            "--image-path",
            "/i",
            "-no-subreaper",
            "--bundle",
            "/b",
            "-detach",
            "id1",
        ]);
        assert_eq!(
            got,
            [
                "rt",
                "--root",
                "/run/x",
                "restore",
                "--image-path",
                "/i",
                "--no-subreaper",
                "--bundle",
                "/b",
                "--detach",
                "id1"
            ]
        );
    }

    #[test]
    fn single_dash_global_with_value_ok() {
        let got = norm(&["rt", "-root", "/r", "-log-format=json", "state", "c"]);
        assert_eq!(
            got,
            ["rt", "--root", "/r", "--log-format=json", "state", "c"]
        );
    }

    #[test]
    fn exec_trailing_args_untouched_ok() {
        let got = norm(&["rt", "exec", "-t", "c1", "ls", "-detach", "-all"]);
        assert_eq!(got, ["rt", "exec", "-t", "c1", "ls", "-detach", "-all"]);
    }

    #[test]
    fn value_that_looks_like_flag_is_kept_ok() {
        // `--bundle -detach` is a (strange) directory name, not a flag.
        let got = norm(&["rt", "create", "-b", "-detach", "c1"]);
        assert_eq!(got, ["rt", "create", "-b", "-detach", "c1"]);
    }

    #[test]
    fn unknown_single_dash_is_left_for_clap_ng() {
        let got = norm(&["rt", "kill", "-nosuchflag", "c1"]);
        assert_eq!(got, ["rt", "kill", "-nosuchflag", "c1"]);
    }
}
