//! Clean runs: correct programs under LD_PRELOAD print no report and behave normally.

use crate::common::{have, program, run, run_with, scratch};
use std::process::Command;

#[test]
fn allocator_edge_cases_threads_and_fork() {
    let r = run(&program("edge.c"), &[], "");
    assert_eq!(r.stdout, "ok\n", "stderr:\n{}", r.stderr);
    assert!(!r.stderr.contains("BUG:"), "{}", r.stderr);
    assert_eq!(r.status, Some(0));
}

#[test]
fn rust_program_with_threads() {
    let r = run(&program("rustprog.rs"), &["clean"], "");
    assert_eq!(r.stdout, "len=18889\nend\n", "stderr:\n{}", r.stderr);
    assert!(!r.stderr.contains("BUG:"), "{}", r.stderr);
    assert_eq!(r.status, Some(0));
}

#[test]
fn cxx_new_delete_forms_and_bad_alloc() {
    let r = run(&program("mismatch.cc"), &["clean"], "");
    assert!(
        r.stdout.contains("bad_alloc caught\nend\n"),
        "stdout:\n{}\nstderr:\n{}",
        r.stdout,
        r.stderr
    );
    assert!(!r.stderr.contains("BUG:"), "{}", r.stderr);
    assert_eq!(r.status, Some(0));
}

#[test]
fn python3_script() {
    if !have("python3") {
        return;
    }
    let script = r#"
import json, re, collections, threading, sqlite3
d = {str(i): [i] * 5 for i in range(5000)}
s = json.dumps(d)
assert json.loads(s) == d
c = collections.Counter(re.findall(r"\d+", s))
db = sqlite3.connect(":memory:")
db.execute("create table t(a, b)")
db.executemany("insert into t values(?, ?)", [(i, str(i)) for i in range(2000)])
ts = [threading.Thread(target=lambda: sorted(str(x) for x in range(5000))) for _ in range(3)]
[t.start() for t in ts]; [t.join() for t in ts]
print(db.execute("select count(*) from t").fetchone()[0], len(c))
"#;
    let r =
        run_with(Command::new("python3").args(["-c", script]).env("PYTHONMALLOC", "malloc"), "");
    assert_eq!(r.stdout.trim(), "2000 5000", "stderr:\n{}", r.stderr);
    assert!(!r.stderr.contains("BUG:"), "{}", r.stderr);
    assert_eq!(r.status, Some(0));
}

#[test]
fn sqlite3_script() {
    if !have("sqlite3") {
        return;
    }
    let sql = scratch().join("t.sql");
    std::fs::write(
        &sql,
        "create table t(a integer primary key, b text);\n\
         with recursive c(x) as (select 1 union all select x + 1 from c where x < 5000)\n\
         insert into t select x, hex(randomblob(16)) from c;\n\
         create index ib on t(b);\n\
         select count(*), max(length(b)) from t;\n",
    )
    .unwrap();
    let r = run_with(
        Command::new("sqlite3").arg(":memory:").stdin(std::fs::File::open(&sql).unwrap()),
        "",
    );
    assert_eq!(r.stdout.trim(), "5000|32", "stderr:\n{}", r.stderr);
    assert!(!r.stderr.contains("BUG:"), "{}", r.stderr);
    assert_eq!(r.status, Some(0));
}

#[test]
fn git_init_and_commit() {
    if !have("git") {
        return;
    }
    let dir = scratch().join("repo");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("a.txt"), "hello\n").unwrap();
    let git = |args: &[&str]| {
        let r = run_with(
            Command::new("git")
                .args([
                    "-c",
                    "user.name=t",
                    "-c",
                    "user.email=t@example.com",
                    "-c",
                    "init.defaultBranch=main",
                ])
                .args(args)
                .current_dir(&dir),
            "",
        );
        assert!(!r.stderr.contains("BUG:"), "git {args:?}:\n{}", r.stderr);
        assert_eq!(r.status, Some(0), "git {args:?}:\n{}", r.stderr);
        r.stdout
    };
    git(&["--version"]);
    git(&["init", "-q", "."]);
    git(&["add", "a.txt"]);
    git(&["commit", "-q", "-m", "first"]);
    assert!(git(&["log", "--format=%s"]).contains("first"));
}
