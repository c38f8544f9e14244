#!/usr/bin/env bash
# aarch64 cross job, on a Debian 12 (bookworm) x86-64 machine with only Debian packages and the
# crate registry (no rustup target needed). Everything, std included (-Zbuild-std), is built
# once for aarch64-unknown-linux-gnu with the compiler's shadow call stack and, by default,
# return addresses signed (-Zbranch-protection=pac-ret: the SCS then holds PAC-signed entries
# that every reader must strip); aarch64/scs-rt.c, linked into every test binary, gives each
# thread its shadow call stack. Then, under qemu-aarch64:
#   1. build the runtime crates' tests, benches and examples (stacktrace, stackdepot, ukasan);
#   2. crates/stacktrace: unit, integration (tests/it) and doc tests;
#   3. examples/softshadow_child must say "unsupported" (exit 77): x86-64 only;
#   4. crates/stackdepot: unit tests (not its integration tests, see below);
#   5. crates/ukasan: unit tests and the integration tests, the child-process report tests of
#      every bug class included (each child re-executed under qemu, see UKASAN_TEST_RUNNER);
#      the few that cannot run under qemu-user are skipped by name, each with its reason below;
#   6. aarch64/scs-test: the SCS capture backend reading x18 for real, and the GCS backend
#      for real under QEMU 11.1 (trixie-backports' static qemu-aarch64, fetched when the
#      mirror has it; the job says so when it does not).
# Not built here: crates/symbolize's own tests (they compile C with the host's gcc; the
# symbolizer itself runs in every ukasan report test above), crates/preload (LD_PRELOAD into
# host-compiled C programs) and crates/cli (drives host programs). DESIGN.md section 7.
#
# For CI: idempotent (a second run reuses the toolchain and the build), installs what it
# needs with apt-get (as root, or through sudo), runs every step even when one fails, prints
# a summary and its elapsed time, and exits non-zero if anything failed (2: setup failed).
#
#   usage: aarch64/check.sh [check|test|bench]   (default: check and test; "check" = step 1
#          only; "bench" = the seed's table under emulation, not part of the default: the Rust
#          workload built for aarch64 with ukasan linked in, timed by the host's `ukasan bench`
#          under qemu-user in modes generic and hw-tags; extra arguments go to `ukasan bench`)
#   env:   SCS_TC            toolchain dir (default /opt/scs-aarch64; reused when complete)
#          SCS_QEMU          qemu-aarch64 binary to run tests with (default: bookworm's)
#          SCS_PAC=0         do not sign return addresses (plain SCS entries); default 1
#          CARGO_TARGET_DIR  default: <repo>/target/aarch64-scs-pac (-nopac with SCS_PAC=0)
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
WHAT=${1:-all}
case $WHAT in all | test | check | bench) ;; *) echo "usage: $0 [check|test|bench]" >&2; exit 2 ;; esac
[ $# -eq 0 ] || shift
HOST_PATH=$PATH   # before the Debian toolchain goes in front: the host's cargo builds the CLI
TC=${SCS_TC:-/opt/scs-aarch64}
export DEBIAN_FRONTEND=noninteractive
SUDO=
[ "$(id -u)" = 0 ] || SUDO=sudo
t0=$(date +%s)
results=()
failed=0
setup_done=
step() { printf '\n=== aarch64: %s (at %ss)\n' "$1" "$(($(date +%s) - t0))"; }
summary() {
  local rc=$?
  printf '\n=== aarch64 summary\n'
  [ -n "$setup_done" ] || { printf '  FAIL  setup (packages or toolchain)\n'; rc=2; }
  [ ${#results[@]} -eq 0 ] || printf '  %s\n' "${results[@]}"
  if [ "$rc" -eq 0 ]; then
    printf 'aarch64: OK in %ss\n' "$(($(date +%s) - t0))"
  else
    printf 'aarch64: FAILED (exit %s) in %ss\n' "$rc" "$(($(date +%s) - t0))" >&2
  fi
  exit "$rc"
}
trap summary EXIT

apt_updated=
apt_update() { [ -n "$apt_updated" ] || { $SUDO apt-get update -qq; apt_updated=1; }; }

# The toolchain's host dependencies: the Depends of rustc-web, cargo-web and their std at
# version $1, minus the packages we unpack ourselves (the first alternative of each).
host_deps() {
  local rt
  rt=$(apt-cache show "libstd-rust-web-dev=$1" | sed -n 's/^Depends: \(libstd-rust-web-[0-9.]*\) .*/\1/p' | head -1)
  apt-cache show "rustc-web=$1" "cargo-web=$1" "$rt=$1" | sed -n 's/^Depends: //p' | tr ',' '\n' \
    | sed 's/([^)]*)//g; s/|.*//; s/[[:space:]]//g; s/^libc-dev$/libc6-dev/' \
    | grep -v -e '^$' -e '^rustc-web$' -e '^cargo-web$' -e '^libstd-rust-web' | sort -u
}

tc_complete() {
  [ -x "$TC/usr/bin/rustc" ] && [ -x "$TC/usr/bin/cargo" ] && [ -s "$TC/host-deps" ] \
    && [ -f "$TC/llvm-libunwind-arm64/libunwind.a" ] && [ -d "$TC/usr/lib/rustlib/src/rust/library/std" ]
}

# 1. Toolchain: unpack rustc-web, cargo-web, host std and std's source into $TC (nothing is
#    installed under /usr; rustup's toolchains are untouched), plus LLVM's libunwind.a for
#    arm64 (libgcc_s's unwinder crashes on the x18 CFI of SCS frames, so panics need it).
#    Unpacked into a scratch directory first and moved into place when complete, so an
#    interrupted run leaves nothing half-done behind.
step "toolchain ($TC)"
# The version of an unpacked rustc-web, from its changelog.
tc_version() {
  zcat "$1/usr/share/doc/rustc-web/changelog.Debian.gz" 2>/dev/null | sed -n '1s/^rustc-web (\([^)]*\)).*/\1/p'
}
if [ -x "$TC/usr/bin/rustc" ] && [ ! -s "$TC/host-deps" ] && [ -w "$TC" ]; then
  # A toolchain unpacked by an older version of this script: record its host dependencies
  # (if apt still knows its version; otherwise it is unpacked again below).
  ver=$(tc_version "$TC")
  if [ -n "$ver" ] && host_deps "$ver" > "$TC/host-deps.new" 2>/dev/null; then
    mv "$TC/host-deps.new" "$TC/host-deps"
    echo "$ver" > "$TC/version"
  else
    rm -f "$TC/host-deps.new"
  fi
fi
if ! tc_complete; then
  apt_update   # the candidate version must still be in the pool
  work=$(mktemp -d)
  new="$TC.partial"
  rm -rf "$new"; mkdir -p "$new"
  ver=$(apt-cache policy rustc-web | awk '/Candidate:/{print $2}')
  [ -n "$ver" ] && [ "$ver" != "(none)" ] || { echo "aarch64: no rustc-web in the apt sources" >&2; exit 2; }
  rt=$(apt-cache show "libstd-rust-web-dev=$ver" | sed -n 's/^Depends: \(libstd-rust-web-[0-9.]*\) .*/\1/p' | head -1)
  (cd "$work" && apt-get -o APT::Sandbox::User=root download -q "rustc-web=$ver" "cargo-web=$ver" \
       "libstd-rust-web-dev=$ver" "$rt=$ver" "rust-web-src=$ver")
  for d in "$work"/rustc-web_*.deb "$work"/cargo-web_*.deb "$work"/libstd-rust-web-*.deb; do
    dpkg-deb -x "$d" "$new"
  done
  # std's sources only (library/), not the whole compiler tree
  src=$(dpkg-deb -c "$work"/rust-web-src_*.deb | awk '$6 ~ /^\.\/usr\/src\/rustc-[0-9.]+\/$/ && !f {print $6; f=1}')
  dpkg-deb --fsys-tarfile "$work"/rust-web-src_*.deb | tar -x -C "$new" "${src}library"
  mkdir -p "$new/usr/lib/rustlib/src"
  ln -sfn "../../../src/$(basename "$src")" "$new/usr/lib/rustlib/src/rust"
  # arm64 libunwind.a (LLVM 14) via a private apt configuration: the system's sources,
  # architectures and dpkg database are not touched.
  a="$work/apt"; mkdir -p "$a/lists/partial" "$a/cache/archives/partial"; : > "$a/status"
  # the system's own Debian mirror
  mirror=$(awk '/^URIs:/{print $2; exit}' /etc/apt/sources.list.d/debian.sources 2>/dev/null || true)
  mirror=${mirror:-http://deb.debian.org/debian}
  echo "deb [arch=arm64 signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] $mirror bookworm main" > "$a/sources.list"
  opts=(-o APT::Sandbox::User=root -o Dir::Etc::SourceList="$a/sources.list" -o Dir::Etc::SourceParts=/nonexistent
        -o Dir::State::Lists="$a/lists" -o Dir::State::Status="$a/status" -o Dir::Cache="$a/cache"
        -o APT::Architecture=arm64 -o APT::Architectures::=arm64 -o Acquire::Languages=none
        -o Acquire::IndexTargets::deb::DEP-11::DefaultEnabled=false)
  apt-get "${opts[@]}" update -qq
  (cd "$work" && apt-get "${opts[@]}" download -q libunwind-14-dev:arm64)
  dpkg-deb -x "$work"/libunwind-14-dev_*_arm64.deb "$work/unwind"
  mkdir -p "$new/llvm-libunwind-arm64"
  cp -L "$work/unwind/usr/lib/aarch64-linux-gnu/libunwind.a" "$new/llvm-libunwind-arm64/"
  host_deps "$ver" > "$new/host-deps"
  echo "$ver" > "$new/version"
  rm -rf "$work" "$TC"
  mv "$new" "$TC"
  tc_complete
fi
echo "rustc-web $(cat "$TC/version" 2>/dev/null || echo '(version not recorded)')"

# 2. Host packages: cross linker + aarch64 glibc, qemu-user, and the runtime libraries and
#    tools the unpacked rustc-web/cargo-web need (installed only when missing).
step "host packages"
mapfile -t pkgs < <(printf '%s\n' gcc-aarch64-linux-gnu binutils-aarch64-linux-gnu libc6-dev-arm64-cross qemu-user; cat "$TC/host-deps")
if ! dpkg -s "${pkgs[@]}" >/dev/null 2>&1; then
  apt_update
  $SUDO apt-get install -y -qq --no-install-recommends "${pkgs[@]}" >/dev/null
fi
echo "${#pkgs[@]} packages present"

# 2b. Optional: QEMU 11.1 for the GCS test (bookworm's 7.2 has no FEAT_GCS): the static
#     qemu-aarch64 from trixie-backports' qemu-user .deb, through a private apt configuration
#     (the system's sources and dpkg database untouched), kept in $TC/qemu-gcs. When it cannot
#     be had, the job says so and the GCS test reports itself not run.
step "QEMU with FEAT_GCS (trixie-backports qemu-user, optional)"
GCS_QEMU=$TC/qemu-gcs/qemu-aarch64
fetch_gcs_qemu() {
  local work a mirror opts rc=0
  work=$(mktemp -d)
  a="$work/apt"; mkdir -p "$a/lists/partial" "$a/cache/archives/partial"; : > "$a/status"
  mirror=$(awk '/^URIs:/{print $2; exit}' /etc/apt/sources.list.d/debian.sources 2>/dev/null || true)
  echo "deb [arch=amd64 signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] ${mirror:-http://deb.debian.org/debian} trixie-backports main" > "$a/sources.list"
  opts=(-o APT::Sandbox::User=root -o Dir::Etc::SourceList="$a/sources.list" -o Dir::Etc::SourceParts=/nonexistent
        -o Dir::State::Lists="$a/lists" -o Dir::State::Status="$a/status" -o Dir::Cache="$a/cache"
        -o APT::Architecture=amd64 -o APT::Architectures::=amd64 -o Acquire::Languages=none
        -o Acquire::IndexTargets::deb::DEP-11::DefaultEnabled=false)
  apt-get "${opts[@]}" update -qq \
    && (cd "$work" && apt-get "${opts[@]}" download -q qemu-user) \
    && dpkg-deb --fsys-tarfile "$work"/qemu-user_*.deb | tar -x -C "$work" ./usr/bin/qemu-aarch64 \
    && mkdir -p "$TC/qemu-gcs" && mv "$work/usr/bin/qemu-aarch64" "$GCS_QEMU" || rc=1
  rm -rf "$work"
  return $rc
}
if [ ! -x "$GCS_QEMU" ]; then
  fetch_gcs_qemu || echo "aarch64: could not fetch trixie-backports' qemu-user (see above)"
fi
if [ -x "$GCS_QEMU" ] && "$GCS_QEMU" --version | head -1; then
  export UKASAN_GCS_QEMU=$GCS_QEMU
else
  echo "aarch64: no QEMU with FEAT_GCS: the GCS test will say it was not run"
  unset UKASAN_GCS_QEMU
fi

# 3. Environment: Debian's compiler, std rebuilt with SCS, tests run under qemu-user.
export PATH="$TC/usr/bin:$PATH" RUSTC="$TC/usr/bin/rustc" RUSTDOC="$TC/usr/bin/rustdoc"
export LD_LIBRARY_PATH="$TC/usr/lib/x86_64-linux-gnu${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
export RUSTC_BOOTSTRAP=1
rustc --version
cargo --version
SCS_PAC=${SCS_PAC:-1}
case $SCS_PAC in 0 | 1) ;; *) echo "aarch64: SCS_PAC must be 0 or 1, not '$SCS_PAC'" >&2; exit 2 ;; esac
if [ "$SCS_PAC" = 1 ]; then pac=-pac; else pac=-nopac; fi
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$ROOT/target/aarch64-scs$pac}
QEMU="${SCS_QEMU:-qemu-aarch64} -L /usr/aarch64-linux-gnu"
# Under TCG the architected PAC algorithm (QARMA5) multiplies the run time of call-heavy
# code (every non-leaf function signs and authenticates); the implementation-defined one
# signs and authenticates the same way, far faster. qemu-user reads QEMU_CPU.
export QEMU_CPU=${QEMU_CPU:-max,pauth-impdef=on}
export CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_LINKER=aarch64-linux-gnu-gcc
export CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_RUNNER=$QEMU
# The child-process tests re-execute their own binary: no binfmt_misc here, so through qemu.
export UKASAN_TEST_RUNNER=$QEMU
mkdir -p "$CARGO_TARGET_DIR"
# The per-thread shadow-stack runtime; C built with x18 reserved, so it never clobbers it.
aarch64-linux-gnu-gcc -O2 -ffixed-x18 -Wall -Werror -c "$ROOT/aarch64/scs-rt.c" -o "$CARGO_TARGET_DIR/scs-rt.o.new"
# Replaced only when it changed: a new mtime would relink every test binary.
if cmp -s "$CARGO_TARGET_DIR/scs-rt.o.new" "$CARGO_TARGET_DIR/scs-rt.o"; then
  rm "$CARGO_TARGET_DIR/scs-rt.o.new"
else
  mv "$CARGO_TARGET_DIR/scs-rt.o.new" "$CARGO_TARGET_DIR/scs-rt.o"
fi
flags="-Zsanitizer=shadow-call-stack -Zfixed-x18 -Cforce-frame-pointers=yes -Lnative=$TC/llvm-libunwind-arm64"
flags="$flags -Clink-arg=$CARGO_TARGET_DIR/scs-rt.o -Clink-arg=-Wl,--wrap=pthread_create"
[ "$SCS_PAC" = 0 ] || flags="$flags -Zbranch-protection=pac-ret"
export UKASAN_SCS_PAC=$SCS_PAC   # read by scs-test at compile time
export CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_RUSTFLAGS="$flags"
export RUSTDOCFLAGS="$flags"   # doctests are built for the target and run under qemu too
build=(-Zbuild-std -Zbuild-std-features=system-llvm-libunwind --target aarch64-unknown-linux-gnu)
setup_done=1

# Every step runs even when an earlier one failed; the script fails if any did.
run() {
  local name=$1 s rc
  shift
  step "$name"
  s=$(date +%s)
  if (cd "$ROOT" && "$@"); then rc=PASS; else rc=FAIL; failed=$((failed + 1)); fi
  results+=("$rc  $name ($(($(date +%s) - s))s)")
}

# The software shadow stack's child process (built by the test step, with the same std): elsewhere than x86-64 it must refuse with 77.
softshadow_child_refuses() {
  local out rc=0 exe="$CARGO_TARGET_DIR/aarch64-unknown-linux-gnu/debug/examples/softshadow_child"
  [ -x "$exe" ] || { echo "$exe was not built (see the test step)"; return 1; }
  out=$($QEMU "$exe" returns) || rc=$?
  echo "$out (exit $rc)"
  [ "$rc" -eq 77 ] && [[ $out == unsupported:* ]]
}

crates=(-p ukasan-stacktrace -p ukasan-stackdepot -p ukasan)
if [ "$WHAT" = bench ]; then
  # The Rust workload for aarch64 (SCS, pac-ret, frame pointers as above) and the host's
  # `ukasan bench` driving it through qemu; the flavors of the seed's table.
  bench_exe="$CARGO_TARGET_DIR/aarch64-unknown-linux-gnu/release/examples/workload"
  run "build the Rust workload for aarch64 (release, ukasan linked in)" \
    cargo build --release "${build[@]}" -p ukasan --example workload
  for mode in generic hw-tags; do
    run "ukasan bench --mode $mode under qemu-aarch64" \
      env -u RUSTC -u RUSTDOC -u RUSTC_BOOTSTRAP -u CARGO_TARGET_DIR -u RUSTDOCFLAGS \
        -u LD_LIBRARY_PATH PATH="$HOST_PATH" \
        cargo run --release -q -p ukasan-cli -- bench --mode "$mode" --runner "$QEMU" \
        --workload-exe "$bench_exe" --flavors plain,no-stack-traces,unwinder,fp,shadow "$@"
  done
  exit $((failed > 0))
fi
# One build of every target (tests, benches, examples; all in the test profile) that the
# steps below only run.
run "build the runtime crates' tests, benches and examples" \
  cargo test --no-run "${build[@]}" "${crates[@]}" --all-targets
if [ "$WHAT" != check ]; then
  # dwarf::signal is left out: qemu-user 7.2 has no vDSO, its signal trampoline has no CFI
  # (every unwinder stops there), and it delivers signals at translation-block boundaries,
  # i.e. mostly at function entries, where the return address is still in x30 (which the
  # DWARF walker does not track). Both hold on a real arm64 kernel only.
  run "crates/stacktrace unit, integration, doc tests under qemu (but dwarf::signal)" \
    cargo test "${build[@]}" -p ukasan-stacktrace -- --skip dwarf::signal::
  run "examples/softshadow_child says unsupported" softshadow_child_refuses
  # Skipped, with the reason:
  #   fork_child_saves...: the depot's lock word sits in a MADV_WIPEONFORK page, and
  #     qemu-user answers every madvise with success and does nothing: the forked child
  #     inherits the held lock and waits for ever (a real kernel wipes it);
  #   pools_roll_over_when_full: a quarter of a million trie nodes, minutes under emulation.
  depot_skips=(depot::tests::fork_child_saves_although_another_parent_thread_held_the_lock
    depot::tests::pools_roll_over_when_full)
  # Its integration tests (8-thread stress, proptest, allocation counting) take minutes
  # under emulation, and TCG on an x86-64 host does not reproduce arm64's weaker memory
  # ordering anyway: the depot runs under every ukasan test below instead.
  run "crates/stackdepot unit tests under qemu" \
    cargo test "${build[@]}" -p ukasan-stackdepot --lib -- "${depot_skips[@]/#/--skip=}" \
    -Zunstable-options --report-time
  # Skipped, with the reason:
  #   the_hot_path_makes_no_syscall...: counts syscalls with ptrace, which qemu-user lacks;
  #   a_users_own_project...: builds a cargo project with the host's toolchain (x86-64 only);
  #   heap::*: the heap's model checks (8 threads of random operations, a million leaks,
  #     a fork storm, the quarantine under a free storm, 50 threads' caches): 1 to several
  #     minutes each under emulation, and architecture-independent logic that the x86-64
  #     job runs; the heap itself serves every test here (the 4-thread stress test included).
  ukasan_skips=(child::the_hot_path_makes_no_syscall_in_any_capture_configuration
    user_project::a_users_own_project_gets_right_stacks_in_every_profile
    heap::a_million_live_objects_are_scanned_for_leaks heap::exiting_threads_hand_their_caches
    heap::fork_during_an_allocation_storm heap::random_sequences_on_8_threads_match_the_model
    heap::the_quarantine_budget_holds_under_a_free_storm)
  # (names in full: a --skip matches substrings, and the unit tests generic::heap::tests::*
  # are meant to run.)
  # --report-time: each test's time under emulation, in the log.
  # UKASAN_REQUIRE_MTE: qemu's `max` CPU has MTE, so the hw-tags tests must run, not skip.
  # UKASAN_TEST_OPTIONS: the child processes reserve 256 MiB per heap class, not 4 GiB
  # (under qemu-user 7.2 the default reservation costs 1.8 s and 1.3 GB per process).
  run "crates/ukasan unit and integration tests (7 bug classes in child processes, hw-tags included) under qemu" \
    env UKASAN_REQUIRE_MTE=1 UKASAN_TEST_OPTIONS=heap_region_mb=256 cargo test "${build[@]}" -p ukasan --lib --tests -- "${ukasan_skips[@]/#/--skip=}" \
    -Zunstable-options --report-time
  # One test at a time: qemu-user's /proc/self/maps can transiently miss a mapping while
  # another thread maps or unmaps memory (seen here: about 1 run in 7 with parallel tests, the
  # SCS reader's lookup of its own shadow stack failing, then succeeding on a retry), and
  # the tests create and end threads all the time.
  run "aarch64/scs-test: SCS capture for real under qemu" \
    bash -c 'cd aarch64/scs-test && cargo test "$@" --lib -- --test-threads=1 --skip gcs_walk' _ "${build[@]}"
  if [ -n "${UKASAN_GCS_QEMU:-}" ]; then
    run "aarch64/scs-test: GCS backend for real under QEMU 11.1 (one thread turns GCS on)" \
      bash -c 'cd aarch64/scs-test && cargo test "$@" --lib -- --nocapture \
        tests::gcs_walk_agrees_with_the_frame_records_under_qemu_11' _ "${build[@]}"
  else
    results+=("SKIP  GCS backend: no QEMU with FEAT_GCS (trixie-backports' qemu-user not fetched)")
  fi
fi
exit $((failed > 0))
