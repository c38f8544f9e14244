//! The software shadow stack (`stacks=shadow`) in real foreign programs: C++ exceptions,
//! longjmp, signals, glibc `backtrace()`, thread exit and cancellation, return values, real
//! tools, and report stacks equal to the frame-pointer walk's.
//!
//! Every C/C++ program here records the return-address slots of its own frames and prints
//! `patched=N`, how many held the trampoline (an address in libukasan.so) at its deepest
//! point: the tests assert it is non-zero, so a scenario that silently stopped patching
//! fails instead of passing without exercising anything.

use crate::common::{have, program, run, run_with, scratch, Run};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Mutex;

const SHADOW: &str = "stacks=shadow";

/// Compiles `progs/<name>` with `compiler` and `flags` into a file named after `tag`, once
/// per test process.
fn build(name: &str, compiler: &str, flags: &[&str], tag: &str) -> PathBuf {
    static BUILT: Mutex<Vec<PathBuf>> = Mutex::new(Vec::new());
    let mut built = BUILT.lock().unwrap();
    let out = scratch().join(format!("{}_{tag}", name.replace('.', "_")));
    if built.contains(&out) {
        return out;
    }
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/it/progs").join(name);
    let st = Command::new(compiler)
        .args(["-g", "-rdynamic", "-Wall"])
        .args(flags)
        .arg(&src)
        .arg("-o")
        .arg(&out)
        .status()
        .unwrap_or_else(|e| panic!("{compiler} not runnable: {e}"));
    assert!(st.success(), "compiling {name} with {flags:?} failed");
    built.push(out.clone());
    out
}

/// Runs `prog` without the preload (the reference behaviour).
fn native(prog: &Path, args: &[&str]) -> Run {
    let o = Command::new(prog).args(args).output().expect("spawn test program");
    Run {
        status: o.status.code(),
        stdout: String::from_utf8_lossy(&o.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&o.stderr).into_owned(),
    }
}

/// Asserts a clean exit without a report, and that the program said `ok`.
fn assert_ok(r: &Run, what: &str) {
    assert!(!r.stderr.contains("BUG:"), "{what}: report:\n{}", r.stderr);
    assert!(
        r.stdout.lines().any(|l| l == "ok"),
        "{what}: stdout:\n{}\nstderr:\n{}",
        r.stdout,
        r.stderr
    );
    assert_eq!(r.status, Some(0), "{what}: stdout:\n{}\nstderr:\n{}", r.stdout, r.stderr);
}

/// A `key=N` the program printed.
fn number(r: &Run, key: &str) -> usize {
    r.printed(key).parse().unwrap_or_else(|e| panic!("{key}: {e}\n{}", r.stdout))
}

/// `stdout` without the `patched` lines (which differ between a run with and without the
/// shadow stack).
fn without_patched(s: &str) -> String {
    s.lines().filter(|l| !l.starts_with("patched")).collect::<Vec<_>>().join("\n")
}

#[test]
fn cxx_exceptions_through_frames_patched_in_operator_new() {
    for (tag, fp) in [("fp", "-fno-omit-frame-pointer"), ("nofp", "-fomit-frame-pointer")] {
        let p = build("shadow_eh.cc", "g++", &["-O2", fp], tag);
        let r = run(&p, &[], SHADOW);
        assert!(!r.stdout.contains("terminate called"), "{tag}: std::terminate:\n{}", r.stdout);
        assert_ok(&r, tag);
        // Every RAII guard of every round was destroyed exactly once: the count the program
        // expects (it checks constructed == destroyed == its own tally) and ours agree.
        let want: usize =
            [12usize, 40, 100, 300].iter().map(|d| 16 * (d + 1) + 5 * (d / 2 + 1)).sum();
        assert_eq!(number(&r, "guards"), want, "{tag}: {}", r.stdout);
        // At the deepest point (300 levels) most frames held the trampoline, on the main
        // thread and on both other threads.
        assert!(number(&r, "patched") >= 200, "{tag}: {}", r.stdout);
        assert!(number(&r, "patched_threads") >= 200, "{tag}: {}", r.stdout);
        // Same output as without the preload.
        let n = native(&p, &[]);
        assert_eq!(without_patched(&r.stdout), without_patched(&n.stdout), "{tag}");
        assert_eq!(number(&n, "patched"), 0);
        assert_eq!(n.status, Some(0));
    }
}

#[test]
fn longjmp_and_siglongjmp_out_of_patched_frames() {
    for (tag, flags) in [("o1", &["-O1", "-fno-omit-frame-pointer"][..]), ("o2", &["-O2"][..])] {
        let p = build("shadow_jump.c", "cc", flags, tag);
        let r = run(&p, &[], SHADOW);
        assert_ok(&r, tag);
        assert_eq!(number(&r, "jumps"), 24, "{tag}: {}", r.stdout);
        assert!(number(&r, "patched") >= 100, "{tag}: {}", r.stdout);
    }
}

/// The backtrace lines without their absolute addresses (`prog(fn+0x1a)[0x55..]`).
fn frames(stdout: &str) -> Vec<String> {
    stdout
        .lines()
        .filter(|l| l.ends_with(']') && l.contains("[0x"))
        .map(|l| l[..l.rfind('[').unwrap()].to_string())
        .collect()
}

#[test]
fn glibc_backtrace_below_patched_frames_names_the_real_functions() {
    let p = program("shadow_bt.c");
    let r = run(&p, &[], SHADOW);
    assert!(!r.stderr.contains("BUG:"), "{}", r.stderr);
    assert_eq!(r.status, Some(0), "{}", r.stderr);
    assert!(number(&r, "patched") >= 5, "{}", r.stdout);
    let got = frames(&r.stdout);
    // No pseudo-frame at the trampoline (it lives in libukasan.so)...
    assert!(got.iter().all(|f| !f.contains("libukasan")), "{}", r.stdout);
    // ...and every real frame, in order: exactly what the program prints without us.
    let want = frames(&native(&p, &[]).stdout);
    assert_eq!(got, want, "{}", r.stdout);
    let names: Vec<&str> =
        got.iter().filter_map(|f| f.split('(').nth(1)?.split('+').next()).take(10).collect();
    let mut want_names = vec!["bt_level"; 6];
    want_names.extend(["bt_inner", "bt_middle", "bt_outer", "main"]);
    assert_eq!(names, want_names, "{}", r.stdout);
    // A short buffer keeps the newest frames (our `backtrace` honours `size`).
    assert_eq!(number(&r, "small"), 3);
    assert_eq!(number(&r, "small_same"), 1, "{}", r.stdout);
}

#[test]
fn pthread_exit_and_cancel_run_every_cleanup_above_patched_frames() {
    for (tag, flags) in [("sjlj", &["-O1"][..]), ("eh", &["-O1", "-fexceptions"][..])] {
        let mut flags = flags.to_vec();
        flags.extend(["-fno-omit-frame-pointer", "-pthread"]);
        let p = build("shadow_cancel.c", "cc", &flags, tag);
        let r = run(&p, &[], SHADOW);
        assert_ok(&r, tag);
        // 6 threads, depths 8, 30, 160, 12, 40, 160: one cleanup per level.
        assert_eq!(number(&r, "cleanups"), 9 + 31 + 161 + 13 + 41 + 161, "{tag}: {}", r.stdout);
        assert!(number(&r, "patched") >= 200, "{tag}: {}", r.stdout);
    }
}

#[test]
fn return_values_pass_through_patched_frames_unchanged() {
    for (tag, flags) in [("o1", &["-O1", "-fno-omit-frame-pointer"][..]), ("o2", &["-O2"][..])] {
        let p = build("shadow_ret.c", "cc", flags, tag);
        let r = run(&p, &[], SHADOW);
        assert_ok(&r, tag);
        // 6 rounds of 7 value-returning frames (nested_long_double counts twice), plus
        // __m256 and __m512 where the CPU has them (`wide`), each patched when it returned:
        // fast path in even rounds, slow path (stale entries above, longjmp) in odd ones.
        let wide = number(&r, "wide");
        assert_eq!(number(&r, "patched"), 6 * (7 + wide), "{tag}: {}", r.stdout);
    }
}

/// Asserts a real tool's run under `stacks=shadow` was clean.
fn assert_clean_tool(r: &Run, what: &str) {
    assert!(!r.stderr.contains("BUG:"), "{what}:\n{}", r.stderr);
    assert_eq!(r.status, Some(0), "{what}: stdout:\n{}\nstderr:\n{}", r.stdout, r.stderr);
}

#[test]
fn python3_with_exceptions_and_recursion() {
    if !have("python3") {
        return;
    }
    let script = r#"
import json, re, threading, collections

class Deep(Exception):
    pass

def down(n, acc):
    acc.append({"n": n, "s": str(n) * 3})
    if n == 0:
        raise Deep(len(acc))
    try:
        return down(n - 1, acc)
    finally:
        acc.append(n)

caught = 0
for depth in (10, 100, 400):
    try:
        down(depth, [])
    except Deep as e:
        caught += e.args[0]

def fib(n):
    return n if n < 2 else fib(n - 1) + fib(n - 2)

def parse_all():
    out = []
    for i in range(300):
        try:
            out.append(json.loads('{"a": [%d%s' % (i, "]}" if i % 3 else "")))
        except json.JSONDecodeError:
            out.append(None)
    return out

res = parse_all()
words = collections.Counter(re.findall(r"\w+", json.dumps({str(i): list(range(i % 7)) for i in range(3000)})))
ts = [threading.Thread(target=lambda: [fib(15) for _ in range(3)]) for _ in range(3)]
[t.start() for t in ts]; [t.join() for t in ts]
print(caught, fib(20), sum(x is None for x in res), len(words))
"#;
    let r = run_with(
        Command::new("python3").args(["-c", script]).env("PYTHONMALLOC", "malloc"),
        SHADOW,
    );
    assert_clean_tool(&r, "python3");
    assert_eq!(r.stdout.trim(), "513 6765 100 3000", "stderr:\n{}", r.stderr);
}

#[test]
fn sqlite3_script() {
    if !have("sqlite3") {
        return;
    }
    let sql = scratch().join("shadow.sql");
    std::fs::write(
        &sql,
        "create table t(a integer primary key, b text, c real);\n\
         with recursive c(x) as (select 1 union all select x + 1 from c where x < 4000)\n\
         insert into t select x, hex(randomblob(12)), x * 0.5 from c;\n\
         create index ib on t(b);\n\
         create table u as select a % 97 as k, count(*) as n, sum(c) as s from t group by k;\n\
         with recursive f(n, a, b) as (select 0, 0, 1 union all select n + 1, b, a + b from f where n < 60)\n\
         select (select count(*) from t), (select count(*) from u), max(a) from f;\n",
    )
    .unwrap();
    let r = run_with(
        Command::new("sqlite3").arg(":memory:").stdin(std::fs::File::open(&sql).unwrap()),
        SHADOW,
    );
    assert_clean_tool(&r, "sqlite3");
    assert_eq!(r.stdout.trim(), "4000|97|1548008755920", "stderr:\n{}", r.stderr);
}

#[test]
fn git_init_and_commit() {
    if !have("git") {
        return;
    }
    let dir = scratch().join("shadow-repo");
    std::fs::create_dir_all(&dir).unwrap();
    for i in 0..20 {
        std::fs::write(dir.join(format!("f{i}.txt")), format!("file {i}\n").repeat(i + 1)).unwrap();
    }
    let git = |args: &[&str]| {
        let r = run_with(
            Command::new("git")
                .args(["-c", "user.name=t", "-c", "user.email=t@example.com"])
                .args(["-c", "init.defaultBranch=main"])
                .args(args)
                .current_dir(&dir),
            SHADOW,
        );
        assert_clean_tool(&r, &format!("git {args:?}"));
        r.stdout
    };
    git(&["init", "-q", "."]);
    git(&["add", "."]);
    git(&["commit", "-q", "-m", "first"]);
    std::fs::write(dir.join("f3.txt"), "changed\n").unwrap();
    git(&["commit", "-q", "-a", "-m", "second"]);
    assert_eq!(git(&["log", "--format=%s"]), "second\nfirst\n");
    assert!(git(&["diff", "--stat", "HEAD~1"]).contains("f3.txt"));
}

/// The frames of a report section, without their absolute addresses (`#3 0x55.. in f+0x9/..`
/// becomes `#3 f+0x9/..`): equal between two runs of the same binary.
fn section_frames(r: &Run, title: &str) -> Vec<String> {
    let rep = r.only("double-free");
    let (_, frames) = rep.section(title);
    frames
        .iter()
        .map(|f| {
            let (num, rest) = f.trim_start().split_once(' ').unwrap();
            let rest = rest.split_once(" in ").map_or(rest, |(_, fun)| fun);
            format!("{num} {rest}")
        })
        .collect()
}

/// Asserts `short` is a prefix of `long` (`what` names the pair).
fn assert_prefix(short: &[String], long: &[String], what: &str, r: &Run) {
    assert!(
        long.len() >= short.len() && long[..short.len()] == *short,
        "{what}:\n{short:#?}\nis not a prefix of\n{long:#?}\nstderr:\n{}",
        r.stderr
    );
}

#[test]
fn report_stacks_with_shadow_equal_those_with_fp() {
    let p = program("shadow_df.c");
    let fp = run(&p, &[], "stacks=fp");
    let sh = run(&p, &[], SHADOW);
    let dw = run(&p, &[], "stacks=dwarf");
    assert_eq!(number(&fp, "patched"), 0);
    assert!(number(&sh, "patched") >= 5, "{}", sh.stdout);
    let detection = |r: &Run| -> Vec<String> {
        let rep = r.only("double-free");
        rep.stack().iter().map(|f| f.split(" in ").nth(1).unwrap().to_string()).collect()
    };
    let mut pairs = vec![("detection", detection(&fp), detection(&sh), detection(&dw))];
    for title in ["Allocated by thread", "Freed by thread"] {
        pairs.push((
            title,
            section_frames(&fp, title),
            section_frames(&sh, title),
            section_frames(&dw, title),
        ));
    }
    for (title, a, ..) in &pairs[1..] {
        // df_alloc/df_free, df_level x 11, df_outer, main: the whole chain above the caller.
        assert!(a.len() >= 14, "{title}:\n{}", fp.stderr);
        assert!(a[1].contains("df_level+") && a[12].contains("df_outer+"), "{}", fp.stderr);
    }
    for (title, a, b, d) in &pairs {
        // Every frame the frame-pointer walk finds, the shadow stack reports identically;
        // frames beyond it (walked with DWARF where frame pointers end, e.g. in glibc's
        // start-up code) are exactly the DWARF unwinder's.
        assert_prefix(a, b, &format!("{title}: fp vs shadow"), &sh);
        assert_prefix(b, d, &format!("{title}: shadow vs dwarf"), &sh);
    }
    assert_eq!(sh.status, Some(1));
}
