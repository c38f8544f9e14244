//! Refuses to build `libukasan.so` without frame pointers: it is the product's own build (a
//! user never builds it with flags of theirs), and with frame records in every function of
//! the preload the CFI step out of each entry point and through the runtime takes the
//! frame-record fast path, and the shipped library is the one that was measured.
//! `ukasan-stacktrace`'s build script inspects the flags and hands its verdict down as
//! `links` metadata.

fn main() {
    println!("cargo::rerun-if-env-changed=DEP_UKASAN_STACKTRACE_FRAME_POINTERS");
    if std::env::var("DEP_UKASAN_STACKTRACE_FRAME_POINTERS").as_deref() != Ok("1") {
        eprintln!(
            "error: libukasan.so must be built with `-C force-frame-pointers=yes`.\n\
             The repository's .cargo/config.toml sets it: run cargo from the repository root \
             (not with --manifest-path from elsewhere), or set RUSTFLAGS=\"-C force-frame-pointers=yes\"."
        );
        std::process::exit(1);
    }
}
