//! Sets `cfg(ukasan_scs)` when this crate is built for aarch64 with the compiler's shadow call
//! stack (`-Zsanitizer=shadow-call-stack`, which rustc accepts on Linux only together with
//! `-Zfixed-x18`): only then may `shadow::scs` read x18 as a shadow-stack pointer.

use std::env;

fn main() {
    println!("cargo::rustc-check-cfg=cfg(ukasan_scs)");
    println!("cargo::rerun-if-changed=build.rs");
    let arch = env::var("CARGO_CFG_TARGET_ARCH").unwrap_or_default();
    // Cargo reports the target's `sanitize` cfg when rustc prints it (nightly or bootstrap
    // compilers) and always passes the flags themselves.
    let cfg = env::var("CARGO_CFG_SANITIZE").unwrap_or_default();
    let flags = env::var("CARGO_ENCODED_RUSTFLAGS").unwrap_or_default();
    let flags: Vec<&str> = flags.split('\x1f').collect();
    let in_flags = flags.iter().enumerate().any(|(i, f)| {
        let f = f.strip_prefix("-Z").map(str::trim_start).unwrap_or(f);
        let f = if f.is_empty() { flags.get(i + 1).copied().unwrap_or("") } else { f };
        f.strip_prefix("sanitizer=").is_some_and(|s| s.split(',').any(|s| s == "shadow-call-stack"))
    });
    let scs = in_flags || cfg.split(',').any(|s| s == "shadow-call-stack");
    if arch == "aarch64" && scs {
        println!("cargo::rustc-cfg=ukasan_scs");
    }
    // Dependents read this as DEP_UKASAN_STACKTRACE_SCS (ukasan's SCS runtime is built only
    // when this crate reads x18).
    println!("cargo::metadata=scs={}", u8::from(arch == "aarch64" && scs));
    // Dependents read this in their build scripts as DEP_UKASAN_STACKTRACE_FRAME_POINTERS
    // (the preload's build rule). Nothing here needs frame pointers: entry points step out
    // of themselves by their CFI, and the walkers follow frame records only where the CFI
    // proves them, so a user's build needs no flag.
    let forced = forces_frame_pointers(&flags);
    println!("cargo::metadata=frame_pointers={}", u8::from(forced));
}

/// Whether the rustflags force frame pointers (`-C force-frame-pointers[=yes|y|on|true]`).
fn forces_frame_pointers(flags: &[&str]) -> bool {
    flags.iter().enumerate().any(|(i, f)| {
        let f = f.strip_prefix("-C").map(str::trim_start).unwrap_or(f);
        let f = if f.is_empty() { flags.get(i + 1).copied().unwrap_or("") } else { f };
        matches!(
            f,
            "force-frame-pointers"
                | "force-frame-pointers=yes"
                | "force-frame-pointers=y"
                | "force-frame-pointers=on"
                | "force-frame-pointers=true"
        )
    })
}
