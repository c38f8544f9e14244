#!/usr/bin/env bash
# aarch64 cross-check of crates/stacktrace, on a Debian 12 (bookworm) x86-64 machine with only
# Debian packages and the crate registry (no rustup target needed):
#   1. type-check crates/stacktrace (lib, tests, benches) for aarch64-unknown-linux-gnu;
#   2. run its unit tests under qemu-aarch64;
#   3. run aarch64/scs-test under qemu-aarch64: the SCS capture backend reading x18 for real.
# Everything (std included, via -Zbuild-std) is built with the compiler's shadow call stack,
# and aarch64/scs-rt.c (linked into every test binary) gives each thread its shadow stack.
# Adapted from shared/aarch64/scs-aarch64.sh (DESIGN.md section 7).
#
#   usage: aarch64/check.sh [check|test]   (default: both; "check" = step 1 only)
#   env:   SCS_TC            toolchain dir (default /opt/scs-aarch64; reused when present)
#          SCS_QEMU          qemu-aarch64 binary to run tests with (default: bookworm's)
#          SCS_PAC=1         also sign return addresses (-Zbranch-protection=pac-ret): the SCS
#                            then holds PAC-signed entries, which the reader must strip
#          CARGO_TARGET_DIR  default: <repo>/target/aarch64-scs (-pac with SCS_PAC=1)
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
WHAT=${1:-all}
TC=${SCS_TC:-/opt/scs-aarch64}
export DEBIAN_FRONTEND=noninteractive
t0=$(date +%s)
step() { printf '\n=== aarch64: %s (%ss)\n' "$1" "$(($(date +%s) - t0))"; }

# 1. Host packages: cross linker + aarch64 glibc, qemu-user, and the runtime
#    libraries of Debian's rustc-web/cargo-web (bookworm-security).
step "host packages"
updated=
if ! command -v aarch64-linux-gnu-gcc >/dev/null || ! command -v qemu-aarch64 >/dev/null \
   || ! dpkg -s libllvm22 libgit2-1.5 libcurl4 libssh2-1 libsqlite3-0 >/dev/null 2>&1; then
  apt-get update -qq; updated=1
  apt-get install -y -qq gcc-aarch64-linux-gnu libc6-dev-arm64-cross qemu-user \
      libllvm22 libgit2-1.5 libcurl4 libssh2-1 libsqlite3-0 >/dev/null
fi

# 2. Toolchain: unpack rustc-web, cargo-web, host std and std's source into $TC (nothing is
#    installed under /usr; rustup's toolchains are untouched), plus LLVM's libunwind.a for
#    arm64 (libgcc_s's unwinder crashes on the x18 CFI of SCS frames, so panics need it).
step "toolchain"
if [ ! -x "$TC/usr/bin/rustc" ]; then
  [ -n "$updated" ] || apt-get update -qq   # the candidate version must still be in the pool
  work=$(mktemp -d); mkdir -p "$TC"
  ver=$(apt-cache policy rustc-web | awk '/Candidate:/{print $2}')
  rt=$(apt-cache show "libstd-rust-web-dev=$ver" | sed -n 's/^Depends: \(libstd-rust-web-[0-9.]*\) .*/\1/p' | head -1)
  (cd "$work" && apt-get -o APT::Sandbox::User=root download -q "rustc-web=$ver" "cargo-web=$ver" \
       "libstd-rust-web-dev=$ver" "$rt=$ver" "rust-web-src=$ver")
  for d in "$work"/rustc-web_*.deb "$work"/cargo-web_*.deb "$work"/libstd-rust-web-*.deb; do
    dpkg-deb -x "$d" "$TC"
  done
  # std's sources only (library/), not the whole compiler tree
  src=$(dpkg-deb -c "$work"/rust-web-src_*.deb | awk '$6 ~ /^\.\/usr\/src\/rustc-[0-9.]+\/$/ && !f {print $6; f=1}')
  dpkg-deb --fsys-tarfile "$work"/rust-web-src_*.deb | tar -x -C "$TC" "${src}library"
  mkdir -p "$TC/usr/lib/rustlib/src"
  ln -sfn "../../../src/$(basename "$src")" "$TC/usr/lib/rustlib/src/rust"
  # arm64 libunwind.a (LLVM 14) via a private apt configuration: the system's sources,
  # architectures and dpkg database are not touched.
  a="$work/apt"; mkdir -p "$a/lists/partial" "$a/cache/archives/partial"; : > "$a/status"
  mirror=$(awk '/^URIs:/{print $2; exit}' /etc/apt/sources.list.d/debian.sources)   # the system's own Debian mirror
  echo "deb [arch=arm64 signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] $mirror bookworm main" > "$a/sources.list"
  opts=(-o APT::Sandbox::User=root -o Dir::Etc::SourceList="$a/sources.list" -o Dir::Etc::SourceParts=/nonexistent
        -o Dir::State::Lists="$a/lists" -o Dir::State::Status="$a/status" -o Dir::Cache="$a/cache"
        -o APT::Architecture=arm64 -o APT::Architectures::=arm64 -o Acquire::Languages=none
        -o Acquire::IndexTargets::deb::DEP-11::DefaultEnabled=false)
  apt-get "${opts[@]}" update -qq
  (cd "$work" && apt-get "${opts[@]}" download -q libunwind-14-dev:arm64)
  dpkg-deb -x "$work"/libunwind-14-dev_*_arm64.deb "$work/unwind"
  mkdir -p "$TC/llvm-libunwind-arm64"
  cp -L "$work/unwind/usr/lib/aarch64-linux-gnu/libunwind.a" "$TC/llvm-libunwind-arm64/"
  rm -rf "$work"
fi
# 3. Environment: Debian's compiler, std rebuilt with SCS, tests run under qemu-user.
export PATH="$TC/usr/bin:$PATH" RUSTC="$TC/usr/bin/rustc" RUSTDOC="$TC/usr/bin/rustdoc"
export LD_LIBRARY_PATH="$TC/usr/lib/x86_64-linux-gnu${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
export RUSTC_BOOTSTRAP=1
rustc --version
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$ROOT/target/aarch64-scs${SCS_PAC:+-pac}}
export CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_LINKER=aarch64-linux-gnu-gcc
export CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_RUNNER="${SCS_QEMU:-qemu-aarch64} -L /usr/aarch64-linux-gnu"
mkdir -p "$CARGO_TARGET_DIR"
# The per-thread shadow-stack runtime; C built with x18 reserved, so it never clobbers it.
aarch64-linux-gnu-gcc -O2 -ffixed-x18 -Wall -Werror -c "$ROOT/aarch64/scs-rt.c" -o "$CARGO_TARGET_DIR/scs-rt.o"
flags="-Zsanitizer=shadow-call-stack -Zfixed-x18 -Cforce-frame-pointers=yes -Lnative=$TC/llvm-libunwind-arm64"
flags="$flags -Clink-arg=$CARGO_TARGET_DIR/scs-rt.o -Clink-arg=-Wl,--wrap=pthread_create"
[ -z "${SCS_PAC:-}" ] || flags="$flags -Zbranch-protection=pac-ret"
export UKASAN_SCS_PAC=${SCS_PAC:-0}   # read by scs-test at compile time
export CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_RUSTFLAGS="$flags"
build=(-Zbuild-std -Zbuild-std-features=system-llvm-libunwind --target aarch64-unknown-linux-gnu)

# Every step runs even when an earlier one failed; the script fails if any did.
failed=()
report() {
  step "done"
  if [ ${#failed[@]} -gt 0 ]; then
    printf 'aarch64: FAILED: %s\n' "${failed[@]}" >&2
    exit 1
  fi
}
step "type-check crates/stacktrace (all targets)"
(cd "$ROOT" && cargo check "${build[@]}" -p ukasan-stacktrace --all-targets --keep-going) || failed+=("crates/stacktrace type-check")
if [ "$WHAT" = check ]; then report; fi

step "crates/stacktrace unit tests under qemu"
(cd "$ROOT" && cargo test "${build[@]}" -p ukasan-stacktrace --lib) || failed+=("crates/stacktrace unit tests")

step "aarch64/scs-test: SCS capture for real under qemu"
(cd "$ROOT/aarch64/scs-test" && cargo test "${build[@]}" --lib) || failed+=("aarch64/scs-test")
report
