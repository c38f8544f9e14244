//! Hardware and compiler shadow-stack backends: runtime detection on this machine, and the
//! public decoders on a synthetic image.

use stacktrace::shadow::{cet, gcs, scs, Region, MAX_SKIP};
use stacktrace::{capture_with, Backend, Unsupported};

/// Whether the kernel reports CET shadow stacks on for this thread (`/proc/self/status`,
/// Linux >= 6.6 with `CONFIG_X86_USER_SHADOW_STACK`).
fn cet_on() -> bool {
    let status = std::fs::read_to_string("/proc/thread-self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("x86_Thread_features:"))
        .is_some_and(|f| f.split_whitespace().any(|w| w == "shstk"))
}

/// One call site of `capture_with` for every backend, so entry 0 is the same for all.
#[inline(never)]
fn capture_in(backend: Backend, buf: &mut [usize]) -> Result<usize, Unsupported> {
    let r = capture_with(backend, buf);
    std::hint::black_box(r)
}

#[test]
fn cet_answers_not_enabled_without_shadow_stacks() {
    let mut buf = [0usize; 32];
    let r = capture_in(Backend::Cet, &mut buf);
    if cfg!(all(target_arch = "x86_64", target_os = "linux")) && cet_on() {
        // A CET machine: the shadow stack must agree with the frame chain (entry 1 differs:
        // the two `capture_in` calls return to different places in this test).
        let n = r.expect("CET is on for this thread");
        let mut fp = [0usize; 32];
        let m = capture_in(Backend::FramePointer, &mut fp).unwrap();
        assert!(n >= 3 && m >= 3);
        assert_eq!((buf[0], buf[2]), (fp[0], fp[2]));
    } else if cfg!(target_arch = "x86_64") {
        assert_eq!(r, Err(Unsupported::NotEnabled));
    } else {
        assert_eq!(r, Err(Unsupported::NotCompiled));
    }
}

#[test]
fn cet_not_enabled_on_other_threads_and_from_capture() {
    let r = std::thread::spawn(|| capture_with(Backend::Cet, &mut [0; 8])).join().unwrap();
    if cfg!(target_arch = "x86_64") && !cet_on() {
        assert_eq!(r, Err(Unsupported::NotEnabled));
        // The default chain falls past CET to a backend that works.
        let c = stacktrace::capture(&mut [0; 8]).unwrap();
        assert_ne!(c.backend, Backend::Cet);
    }
}

#[cfg(target_arch = "x86_64")]
#[test]
fn gcs_and_scs_are_not_compiled_on_x86_64() {
    let mut buf = [0usize; 8];
    assert_eq!(capture_with(Backend::Gcs, &mut buf), Err(Unsupported::NotCompiled));
    assert_eq!(capture_with(Backend::Scs, &mut buf), Err(Unsupported::NotCompiled));
    const { assert!(!scs::COMPILED) };
}

/// A word-addressed image for the public decoders.
struct Words(usize, Vec<usize>);

impl stacktrace::shadow::Memory for Words {
    fn read(&self, addr: usize) -> Option<usize> {
        (addr & 7 == 0).then_some(())?;
        self.1.get(addr.checked_sub(self.0)? / 8).copied()
    }
}

#[test]
fn synthetic_images_decode_exactly() {
    let base = 0x7000_0000usize;
    let own = 0x40_0100;
    let caller = 0x40_1000;
    let mut buf = [0usize; 8];

    // CET: own frame, caller, signal token, restore token, two more frames; down to the base.
    let img =
        Words(base, vec![own, caller, cet::SIGNAL_TOKEN | base, base + 9, 0x40_2000, 0x40_3000]);
    let region = Region { lo: base, hi: base + 48 };
    let n = cet::walk(&img, base, region, caller, &mut buf).unwrap();
    assert_eq!(&buf[..n], &[caller, 0x40_2000, 0x40_3000]);

    // GCS: caller, a signal cap token, one frame, a cap token: the end.
    let img = Words(base, vec![caller, base, 0x40_2000, (base + 24) | 1, 0x40_3000]);
    let region = Region { lo: base, hi: base + 40 };
    let n = gcs::walk(&img, base, region, caller, &mut buf).unwrap();
    assert_eq!(&buf[..n], &[caller, 0x40_2000]);

    // SCS (grows up): base marker, a PAC-signed frame, the caller, an own frame; x18 above.
    let pac = 0x0055_0000_0000_0000;
    let img = Words(base, vec![base, pac | 0x40_2000, caller, own, 0]);
    let region = Region { lo: base, hi: base + 40 };
    let n = scs::walk(&img, base + 32, None, region, caller, &mut buf).unwrap();
    assert_eq!(&buf[..n], &[caller, 0x40_2000]);

    // The caller deeper than MAX_SKIP own frames is not found.
    let mut words = vec![own; MAX_SKIP + 1];
    words.push(caller);
    let img = Words(base, words);
    let region = Region { lo: base, hi: base + 8 * (MAX_SKIP + 2) };
    assert_eq!(cet::walk(&img, base, region, caller, &mut buf), Err(Unsupported::NoFrames));
}
