// Record the git commit for `--version` (docker info shows "commit: …").
fn main() {
    let commit = std::process::Command::new("git")
        .args(["rev-parse", "--short=12", "HEAD"])
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_else(|| "unknown".to_string());
    println!("cargo:rustc-env=CNTRLIVE_COMMIT={commit}");
    println!("cargo:rerun-if-changed=.git/HEAD");
    println!("cargo:rerun-if-changed=.git/refs/heads");
    println!("cargo:rerun-if-env-changed=CNTRLIVE_PIE");
    let linux = std::env::var("CARGO_CFG_TARGET_OS").as_deref() == Ok("linux");
    // .cargo/config.toml links statically at a fixed address (crt-static,
    // relocation-model=static): no loader runs at all, nothing to add.
    let fully_static = std::env::var("CARGO_CFG_TARGET_FEATURE")
        .is_ok_and(|f| f.split(',').any(|x| x == "crt-static"));
    if fully_static {
        return;
    }
    if linux && std::env::var_os("CNTRLIVE_PIE").is_none_or(|v| v == "0") {
        // Startup: a position-independent executable has its ~480 KB of
        // relocated read-only data (.data.rel.ro: vtables, string tables)
        // written by the dynamic loader at every exec, one copy-on-write
        // fault per page: 317 page faults per `--version` instead of 201,
        // 2.33 vs 1.88 ms here (docs/performance.md, "Session 12"). Linked
        // at a fixed address the loader relocates nothing. Debian's runc,
        // containerd and containerd-shim-runc-v2 are built the same way;
        // the cost is ASLR for the executable's own image (libraries,
        // heap, stack and mmaps stay randomised). CNTRLIVE_PIE=1 at build
        // time keeps a PIE.
        println!("cargo:rustc-link-arg-bins=-no-pie");
    } else if linux && relr_supported() {
        println!("cargo:rustc-link-arg-bins=-Wl,-z,pack-relative-relocs");
    }
}

// Startup (PIE builds): a PIE's relative relocations (~28 000 here) are read from a
// 0.7 MB .rela.dyn at every exec; packed (DT_RELR) they take a few KB and
// fewer page faults (docs/performance.md). Needs glibc >= 2.36 where it
// runs (and GNU ld >= 2.38 to link): used only when the build host has both.
fn relr_supported() -> bool {
    let out = |cmd: &str, args: &[&str]| {
        std::process::Command::new(cmd)
            .args(args)
            .output()
            .ok()
            .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
            .unwrap_or_default()
    };
    // "glibc 2.36"
    let glibc = out("getconf", &["GNU_LIBC_VERSION"]);
    // "GNU ld (GNU Binutils for Debian) 2.40"
    let ld = out("ld", &["--version"]);
    let version = |s: &str| -> Option<(u32, u32)> {
        let v = s.lines().next()?.split_whitespace().last()?;
        let mut it = v.split('.').map(|p| p.parse::<u32>().ok());
        Some((it.next()??, it.next()??))
    };
    matches!(version(&glibc), Some(v) if v >= (2, 36))
        && ld.starts_with("GNU ld")
        && matches!(version(&ld), Some(v) if v >= (2, 38))
}
