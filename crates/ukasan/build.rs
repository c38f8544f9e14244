//! Sets `cfg(ukasan_scs)` when the capture crate reads x18 as a shadow call stack (aarch64
//! built with `-Zsanitizer=shadow-call-stack`, as its build script decides and reports in
//! `DEP_UKASAN_STACKTRACE_SCS`): only then is the SCS runtime (`src/scs.rs`) built.

fn main() {
    println!("cargo::rustc-check-cfg=cfg(ukasan_scs)");
    println!("cargo::rerun-if-changed=build.rs");
    println!("cargo::rerun-if-env-changed=DEP_UKASAN_STACKTRACE_SCS");
    if std::env::var("DEP_UKASAN_STACKTRACE_SCS").as_deref() == Ok("1") {
        println!("cargo::rustc-cfg=ukasan_scs");
    }
}
