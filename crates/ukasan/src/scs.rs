//! Shadow-call-stack runtime for programs built with the compiler's shadow call stack
//! (aarch64, `-Zsanitizer=shadow-call-stack -Zfixed-x18`, std rebuilt with `-Zbuild-std`).
//!
//! Such code pushes the link register to `[x18], #8` in every non-leaf prologue, so x18 must
//! point at a shadow stack before the first instrumented function runs, in every thread.
//! Nothing in glibc does that; linking ukasan does, with no linker flags:
//! - **Main thread.** An entry in `.init_array.00000` (the first constructor of the
//!   executable; not `.preinit_array`, where a later libgcc_s constructor overwrites x18) maps
//!   the shadow stack with raw syscalls in uninstrumented assembly, sets x18, then enters Rust.
//! - **Every thread made by `pthread_create`.** This crate defines `pthread_create`: the
//!   program's calls (std's included) reach it instead of glibc's. It maps the new thread's
//!   shadow stack and starts the thread in an assembly trampoline that sets x18 before the
//!   start routine, which it then tail-calls (so it returns straight into glibc).
//! - **Layout.** [`SIZE`] bytes (`[lo, lo + SIZE)`), then a `PROT_NONE` guard page that an
//!   overflow faults on: the stack grows up. Words 0 and 1 carry the start routine and its
//!   argument, word 2 holds its own address (the base marker the SCS reader stops at), and
//!   the first entry is word 3 (the base). The thread registers `[lo, lo + SIZE)` and the base
//!   with the capture crate (`stacktrace::shadow::register_scs_stack`), so a capture never
//!   reads `/proc/self/maps` to find them.
//!
//! Not covered (documented limits):
//! - threads created inside C libraries loaded at run time (`dlopen`) or linked without the
//!   executable exporting `pthread_create`: they call glibc's directly, run with an
//!   inherited x18 and corrupt their creator's shadow stack as soon as they run SCS code;
//!   threads made with a raw `clone` likewise;
//! - C code that clobbers x18 (glibc and other C libraries are not built with
//!   `-ffixed-x18`; nothing exercised so far did, but it is allowed to);
//! - `longjmp` out of SCS frames does not rewind x18 (the stale entries stay, and the walk
//!   shows them); unwinding does, through the CFI LLVM emits for x18;
//! - a thread's shadow stack is never unmapped: TLS destructors run on it after the start
//!   routine returns, and nothing runs after them that could free it (64 KiB + a page of
//!   address space per thread ever created; the pages touched stay resident).
//!
//! Elsewhere (another target, or aarch64 without the shadow call stack) this module is empty
//! but for [`BUILT`] and [`main_thread_stack`].

/// Bytes of a shadow call stack: 8190 entries after the three header words.
pub const SIZE: usize = 64 * 1024;

/// Whether this build has the runtime (aarch64 with the shadow call stack).
pub const BUILT: bool = cfg!(all(target_arch = "aarch64", ukasan_scs));

#[cfg(all(target_arch = "aarch64", ukasan_scs))]
mod rt {
    use core::ffi::{c_int, c_void};
    use core::sync::atomic::{AtomicUsize, Ordering};

    use super::SIZE;

    const PAGE: usize = 4096;
    const _: () = assert!(PAGE == 1 << 12 && SIZE.is_multiple_of(PAGE));
    /// Offset of the base marker; the base (first entry) follows it.
    const MARKER: usize = 16;

    /// The main thread's mapping (0 until the constructor ran).
    pub(super) static MAIN: AtomicUsize = AtomicUsize::new(0);

    /// Tells `aarch64/scs-rt.c` (the C runtime of the capture crate's own tests) to stand
    /// aside when this runtime is linked too.
    #[no_mangle]
    #[used]
    pub static ukasan_scs_runtime: u8 = 1;

    // SAFETY (of the assembly): the constructor uses only caller-saved registers, x8 and the
    // syscalls `mmap`, `write` and `exit_group`; it sets x18 to a fresh mapping before it
    // tail-calls Rust. The trampoline runs on the new thread's stack, keeps the C ABI (a
    // frame record around its one call, its argument saved in a 16-byte slot) and tail-calls
    // the start routine with x18 set.
    core::arch::global_asm!(
        ".pushsection .text.ukasan_scs,\"ax\",%progbits",
        ".p2align 2",
        ".type ukasan_scs_init_main,%function",
        "ukasan_scs_init_main:",
        "mov x0, #0",
        "mov x1, #{pages}",
        "lsl x1, x1, #12",
        "mov x2, #3",     // PROT_READ | PROT_WRITE
        "mov x3, #0x22",  // MAP_PRIVATE | MAP_ANONYMOUS
        "mov x4, #-1",
        "mov x5, #0",
        "mov x8, #222",   // mmap
        "svc #0",
        "cmn x0, #4095",
        "b.hs 1f",
        "add x1, x0, #{marker}",
        "str x1, [x0, #{marker}]",
        "stp xzr, xzr, [x0]",
        "add x18, x0, #{marker} + 8",
        "b {main_ready}",
        "1:",
        "mov x0, #2",
        "adr x1, 2f",
        "mov x2, #3f - 2f",
        "mov x8, #64",    // write
        "svc #0",
        "mov x0, #127",
        "mov x8, #94",    // exit_group
        "svc #0",
        "2: .ascii \"ukasan: cannot map the main thread's shadow call stack\\n\"",
        "3:",
        ".size ukasan_scs_init_main, . - ukasan_scs_init_main",
        ".p2align 2",
        ".globl ukasan_scs_thread_start",
        ".hidden ukasan_scs_thread_start",
        ".type ukasan_scs_thread_start,%function",
        "ukasan_scs_thread_start:",
        "add x18, x0, #{marker} + 8",
        "stp x29, x30, [sp, #-32]!",
        "mov x29, sp",
        "str x0, [sp, #16]",
        "bl {thread_ready}",
        "ldr x9, [sp, #16]",
        "ldp x29, x30, [sp], #32",
        "ldp x1, x0, [x9]",
        "br x1",
        ".size ukasan_scs_thread_start, . - ukasan_scs_thread_start",
        ".popsection",
        ".pushsection .init_array.00000,\"aw\"",
        ".p2align 3",
        ".xword ukasan_scs_init_main",
        ".popsection",
        pages = const (SIZE + PAGE) / PAGE,
        marker = const MARKER,
        main_ready = sym main_ready,
        thread_ready = sym thread_ready,
    );

    extern "C" {
        fn ukasan_scs_thread_start(mapping: *mut c_void) -> *mut c_void;
    }

    /// The main thread's constructor, once x18 points into `mapping`.
    extern "C" fn main_ready(mapping: usize) {
        guard(mapping);
        register(mapping);
        // Relaxed: read by this thread, or by threads it creates later (ordered by their
        // creation).
        MAIN.store(mapping, Ordering::Relaxed);
    }

    /// A new thread's first Rust code, once x18 points into `mapping`.
    extern "C" fn thread_ready(mapping: usize) {
        register(mapping);
    }

    fn register(mapping: usize) {
        stacktrace::shadow::register_scs_stack(mapping, mapping + SIZE, mapping + MARKER + 8);
    }

    /// Makes the page above the stack fault (the main thread's: mapped by the constructor).
    fn guard(mapping: usize) {
        // SAFETY: the page above our own fresh mapping's stack part; nothing uses it.
        let r = unsafe { libc::mprotect((mapping + SIZE) as *mut c_void, PAGE, libc::PROT_NONE) };
        if r != 0 {
            crate::sys::write_all(2, b"ukasan: cannot guard a shadow call stack\n");
        }
    }

    /// The start routine is passed as a plain code address (same ABI as a function pointer).
    type Create = unsafe extern "C" fn(
        *mut libc::pthread_t,
        *const libc::pthread_attr_t,
        *const c_void,
        *mut c_void,
    ) -> c_int;

    /// glibc's `pthread_create` (0: not looked up yet).
    static REAL: AtomicUsize = AtomicUsize::new(0);

    fn real() -> Option<Create> {
        // Relaxed: a function address; racing lookups find the same one.
        let mut f = REAL.load(Ordering::Relaxed);
        if f == 0 {
            // SAFETY: a NUL-terminated name; RTLD_NEXT finds the next definition after ours.
            f = unsafe { libc::dlsym(libc::RTLD_NEXT, c"pthread_create".as_ptr()) } as usize;
            // Relaxed: as above.
            REAL.store(f, Ordering::Relaxed);
        }
        // SAFETY: glibc's `pthread_create` has this signature.
        (f != 0).then(|| unsafe { core::mem::transmute::<usize, Create>(f) })
    }

    /// `pthread_create`, interposed: the new thread gets its own shadow call stack.
    ///
    /// # Safety
    /// As glibc's `pthread_create`.
    #[no_mangle]
    pub unsafe extern "C" fn pthread_create(
        thread: *mut libc::pthread_t,
        attr: *const libc::pthread_attr_t,
        start: *const c_void,
        arg: *mut c_void,
    ) -> c_int {
        let Some(real) = real() else { return libc::EAGAIN };
        // SAFETY: a fresh private anonymous mapping.
        let m = unsafe {
            libc::mmap(
                core::ptr::null_mut(),
                SIZE + PAGE,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        if m == libc::MAP_FAILED {
            return libc::EAGAIN;
        }
        let mapping = m as usize;
        guard(mapping);
        let words = m as *mut usize;
        // SAFETY: the first three words of our own fresh mapping.
        unsafe {
            words.write(start as usize);
            words.add(1).write(arg as usize);
            words.add(2).write(mapping + MARKER);
        }
        // SAFETY: the trampoline has the start routine's ABI and finds its routine and
        // argument in the mapping, which lives as long as the thread (never unmapped).
        let r = unsafe { real(thread, attr, ukasan_scs_thread_start as *const c_void, m) };
        if r != 0 {
            // SAFETY: no thread got it.
            unsafe { libc::munmap(m, SIZE + PAGE) };
        }
        r
    }
}

/// The main thread's shadow call stack `[lo, lo + SIZE)`, when this runtime set it up.
pub fn main_thread_stack() -> Option<(usize, usize)> {
    #[cfg(all(target_arch = "aarch64", ukasan_scs))]
    {
        // Relaxed: see `rt::MAIN`.
        let m = rt::MAIN.load(core::sync::atomic::Ordering::Relaxed);
        (m != 0).then_some((m, m + SIZE))
    }
    #[cfg(not(all(target_arch = "aarch64", ukasan_scs)))]
    None
}
