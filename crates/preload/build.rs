//! Refuses to build `libukasan.so` without frame pointers: its `malloc` finds the caller
//! through its own frame record, and a preload library that silently records no stacks would
//! make every report useless.

fn main() {
    println!("cargo::rerun-if-changed=build.rs");
    println!("cargo::rerun-if-env-changed=CARGO_ENCODED_RUSTFLAGS");
    let flags = std::env::var("CARGO_ENCODED_RUSTFLAGS").unwrap_or_default();
    let flags: Vec<&str> = flags.split('\x1f').collect();
    let forced = flags.iter().enumerate().any(|(i, f)| {
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
    });
    if !forced {
        eprintln!(
            "error: libukasan.so must be built with `-C force-frame-pointers=yes`.\n\
             The repository's .cargo/config.toml sets it: run cargo from the repository root \
             (not with --manifest-path from elsewhere), or set RUSTFLAGS=\"-C force-frame-pointers=yes\"."
        );
        std::process::exit(1);
    }
}
