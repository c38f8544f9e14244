//! Bad input and hostile situations: stderr closed or reused, unwritable and hostile log
//! paths, allocations before the runtime's initialization, suppressions, options files,
//! leak reports that leave the exit status alone, programs that run compilers.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::common::{have, lib, program, run, run_with, scratch, split_reports};

fn dir(name: &str) -> PathBuf {
    let d = scratch().join(name);
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn hardening() -> PathBuf {
    program("hardening.c")
}

#[test]
fn a_reused_fd_2_is_never_written_and_the_report_goes_to_a_log_file() {
    let d = dir("close-stderr");
    let data = d.join("data");
    let r = run_with(
        Command::new(hardening()).args(["close-stderr", data.to_str().unwrap()]).env("TMPDIR", &d),
        "",
    );
    assert_eq!(r.printed("data_fd"), "2", "the program's data file took fd 2");
    assert_eq!(std::fs::read_to_string(&data).unwrap(), "data before\ndata after\n");
    assert_eq!(r.status, Some(1), "the report still counts");
    let pid = r.pid();
    let log = std::fs::read_to_string(d.join(format!("ukasan.{pid}"))).unwrap();
    let reps = split_reports(&log);
    assert_eq!(reps.len(), 1, "{log}");
    assert!(reps[0].header().starts_with("BUG: KASAN: double-free in do_free+"), "{log}");
}

#[test]
fn a_closed_stderr_sends_reports_to_the_fallback_log() {
    let d = dir("stderr-closed");
    let r = run_with(Command::new(hardening()).arg("stderr-closed").env("TMPDIR", &d), "");
    assert_eq!(r.status, Some(1));
    let files: Vec<_> = std::fs::read_dir(&d).unwrap().flatten().map(|e| e.path()).collect();
    assert_eq!(files.len(), 1, "{files:?}");
    let log = std::fs::read_to_string(&files[0]).unwrap();
    assert_eq!(split_reports(&log).len(), 1, "{log}");
}

#[test]
fn log_path_files_are_per_process_new_and_never_through_a_link() {
    let d = dir("log-path");
    let base = d.join("rep");
    let r = run(&hardening(), &["fork-report"], &format!("log_path={}", base.display()));
    assert_eq!(r.status, Some(1));
    assert_eq!(r.printed("child_status"), "1");
    assert!(r.stderr.is_empty(), "reports go to the files only: {}", r.stderr);
    for pid in [r.pid(), r.printed("child_pid")] {
        let text = std::fs::read_to_string(format!("{}.{pid}", base.display())).unwrap();
        let reps = split_reports(&text);
        assert_eq!(reps.len(), 1, "process {pid} writes its own file whole:\n{text}");
        assert_eq!(reps[0].kind(), "double-free");
    }

    // A symbolic link planted at the name the next process would use is not followed.
    let victim = d.join("victim");
    std::fs::write(&victim, "precious\n").unwrap();
    let mut child = Command::new(hardening());
    child.arg("double-free");
    // The pid is known only after spawn: plant links for a window of likely pids instead
    // of racing. Linux hands out pids in increasing order, so the next ones are covered.
    let next = std::fs::read_to_string("/proc/sys/kernel/ns_last_pid")
        .ok()
        .and_then(|s| s.trim().parse::<u32>().ok());
    let Some(next) = next else {
        eprintln!("note: /proc/sys/kernel/ns_last_pid unreadable: the link case is skipped");
        return;
    };
    for pid in next + 1..next + 2000 {
        let _ = std::os::unix::fs::symlink(&victim, format!("{}.{pid}", base.display()));
    }
    let r = run_with(&mut child, &format!("log_path={}", base.display()));
    assert_eq!(std::fs::read_to_string(&victim).unwrap(), "precious\n");
    let pid = r.pid();
    let own = PathBuf::from(format!("{}.{pid}", base.display()));
    assert!(own.is_symlink(), "the planted link was not at the child's name: nothing tested");
    let landed = PathBuf::from(format!("{}.{pid}.1", base.display()));
    let text = std::fs::read_to_string(&landed).unwrap();
    assert_eq!(split_reports(&text).len(), 1, "{}: {text}", landed.display());
}

#[test]
fn a_forked_child_exits_with_its_own_findings_only() {
    let r = run(&hardening(), &["report-then-fork"], "");
    assert_eq!(r.reports().len(), 1, "{}", r.stderr);
    assert_eq!(r.printed("child_status"), "0", "the parent's report is not the child's");
    assert_eq!(r.status, Some(1));
    // A child's own finding still sets its status (fork-report: the child double-frees).
    let r = run(&hardening(), &["fork-report"], "");
    assert_eq!(r.printed("child_status"), "1", "{}", r.stderr);
}

#[test]
fn unwritable_log_path_falls_back_to_stderr_with_a_note() {
    let r = run(&hardening(), &["double-free"], "log_path=/nonexistent-dir/ukasan");
    let pid = r.pid();
    assert!(
        r.stderr.starts_with(&format!(
            "ukasan: cannot create log file /nonexistent-dir/ukasan.{pid} \
             (no such file or directory): reports go to stderr\n"
        )),
        "{}",
        r.stderr
    );
    assert_eq!(r.only("double-free").kind(), "double-free");
    assert_eq!(r.status, Some(1));
}

#[test]
fn allocations_before_initialization_are_used_and_freed_quietly() {
    // .preinit_array: before every shared object's constructor, libukasan's included.
    let r = run(&hardening(), &["preinit"], "");
    assert_eq!(r.printed("early0"), "made in preinit");
    assert_eq!(r.printed("early3"), "strdup in preinit");
    assert_eq!(r.printed("grown"), "made in preinit");
    assert!(r.reports().is_empty(), "{}", r.stderr);
    assert_eq!(r.status, Some(0), "{}", r.stderr);

    // A library constructor that the loader runs before libukasan's.
    let d = dir("ctor");
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/it/progs");
    let so = d.join("libctorlib.so");
    let st = Command::new("cc")
        .args(["-O1", "-g", "-shared", "-fPIC", "-o"])
        .arg(&so)
        .arg(src.join("ctorlib.c"))
        .status()
        .unwrap();
    assert!(st.success());
    let exe = d.join("ctormain");
    let st = Command::new("cc")
        .args(["-O1", "-g", "-o"])
        .arg(&exe)
        .arg(src.join("ctormain.c"))
        .arg(format!("-L{}", d.display()))
        .arg("-lctorlib")
        .arg(format!("-Wl,-rpath,{}", d.display()))
        .status()
        .unwrap();
    assert!(st.success());
    let r = run(&exe, &[], "");
    assert_eq!(r.printed("buf"), "from a library constructor");
    assert!(r.stdout.contains("end\n"));
    assert!(r.reports().is_empty(), "{}", r.stderr);
    assert_eq!(r.status, Some(0), "{}", r.stderr);
}

#[test]
fn leak_exitcode_zero_leaves_the_status_alone_for_leaks_only() {
    let r = run(&hardening(), &["leak"], "leak_exitcode=0");
    assert_eq!(r.only("memory-leak").kind(), "memory-leak");
    assert_eq!(r.status, Some(0), "{}", r.stderr);
    let r = run(&hardening(), &["leak"], "leak_exitcode=9");
    assert_eq!(r.status, Some(9));
    let r = run(&hardening(), &["leak"], "");
    assert_eq!(r.status, Some(1), "the default is LeakSanitizer's: exitcode");
    let r = run(&hardening(), &["leak-and-double-free"], "leak_exitcode=0:exitcode=5");
    assert_eq!(r.status, Some(5), "other reports still set exitcode: {}", r.stderr);
    assert_eq!(r.reports().len(), 2, "{}", r.stderr);
    let r = run(&hardening(), &["leak"], "leak_exitcode=256");
    assert!(r.stderr.contains(
        "bad value '256' for option 'leak_exitcode' ignored \
         (accepted: an integer 0..=255 (0: leaks leave the exit status alone))"
    ));
}

#[test]
fn objects_held_by_threads_still_running_at_exit_are_not_leaks() {
    // Three threads hold an object each (on a parked stack, in static TLS, on the stack of a
    // thread spinning in user code) when main returns; one object is really lost. The scan
    // stops the threads and counts what they hold: one leak, of 40 bytes.
    for opts in ["", "mode=guarded:sample_rate=1", "stacks=off"] {
        for _ in 0..3 {
            let r = run(&hardening(), &["held-by-threads"], opts);
            let leaks = r.reports();
            assert_eq!(leaks.len(), 1, "{opts}: {}", r.stderr);
            assert!(
                leaks[0].access().starts_with("Leak of 40 byte(s) in 1 object(s)"),
                "{opts}: {}",
                r.stderr
            );
            assert!(r.stderr.contains("SUMMARY: ukasan: 40 byte(s) leaked"), "{}", r.stderr);
            assert!(!r.stderr.contains("could not be stopped"), "{}", r.stderr);
            assert_eq!(r.status, Some(1), "{}", r.stderr);
            assert!(r.stdout.contains("end\n"));
        }
    }
    // A thread that blocks every signal is not stopped, and the report says so: its 64-byte
    // object is a candidate like any other (LeakSanitizer's ptrace would reach it).
    let r = run(&hardening(), &["held-by-masked-thread"], "");
    assert!(
        r.stderr.contains("SUMMARY: ukasan: 104 byte(s) leaked in 2 allocation(s)"),
        "{}",
        r.stderr
    );
    assert!(
        r.stderr.contains("ukasan: 1 other thread(s) could not be stopped for the leak scan"),
        "{}",
        r.stderr
    );
    assert_eq!(r.status, Some(1), "{}", r.stderr);
}

#[test]
fn suppressions_silence_matching_reports_and_name_bad_lines() {
    let d = dir("supp");
    let supp = d.join("supp.txt");
    std::fs::write(&supp, "# ours\nleak:^do_alloc$\n\nheap-leak:x\nnonsense\n").unwrap();
    let opts = format!("suppressions={}", supp.display());
    let r = run(&hardening(), &["leak"], &opts);
    assert!(r.reports().is_empty(), "{}", r.stderr);
    assert_eq!(r.status, Some(0), "a suppressed leak is not a finding: {}", r.stderr);
    assert!(r.stderr.contains("Suppressions used:\n  count      bytes template\n"), "{}", r.stderr);
    assert!(r.stderr.contains("      1         40 leak:^do_alloc$\n"), "{}", r.stderr);
    assert!(!r.stderr.contains("SUMMARY"), "{}", r.stderr);
    assert!(r.stderr.contains(&format!(
        "ukasan: suppressions file '{}' line 4: unknown kind (accepted: leak, memory-leak, \
         double-free,",
        supp.display()
    )));
    assert!(r.stderr.contains("line 5: not kind:pattern (e.g. leak:my_function)"), "{}", r.stderr);

    // A leak rule does not hide a double free; a double-free rule does, by module too.
    let r = run(&hardening(), &["double-free"], &opts);
    assert_eq!(r.only("double-free").kind(), "double-free");
    std::fs::write(&supp, "double-free:hardening_c\n").unwrap();
    let r = run(&hardening(), &["double-free"], &opts);
    assert!(r.reports().is_empty(), "{}", r.stderr);
    assert_eq!(r.status, Some(0));
    assert!(r.stdout.contains("end\n"));

    let r = run(&hardening(), &["leak"], "suppressions=/nonexistent/supp");
    assert!(r.stderr.contains(
        "ukasan: cannot read suppressions file '/nonexistent/supp': no such file or directory"
    ));
    assert_eq!(r.only("memory-leak").kind(), "memory-leak");
}

#[test]
fn options_file_applies_in_place_and_names_its_problems() {
    let d = dir("optfile");
    let f = d.join("opts");
    std::fs::write(
        &f,
        "# leak policy\nleak_exitcode=0   # leaks are known\nexitcode=7\n  depth=0\n",
    )
    .unwrap();
    let r = run(&hardening(), &["leak-and-double-free"], &format!("options_file={}", f.display()));
    assert_eq!(r.status, Some(7), "{}", r.stderr);
    assert!(r.stderr.contains("bad value '0' for option 'depth' ignored"), "{}", r.stderr);
    // Later items win over the file.
    let r = run(&hardening(), &["leak"], &format!("options_file={}:leak_exitcode=3", f.display()));
    assert_eq!(r.status, Some(3));
    let r = run(&hardening(), &["leak"], "options_file=/nonexistent/opts");
    assert!(r.stderr.contains(
        "ukasan: cannot read options_file '/nonexistent/opts': no such file or directory"
    ));
    // A file that names itself stops at the nesting limit.
    std::fs::write(&f, format!("options_file={}\n", f.display())).unwrap();
    let r = run(&hardening(), &["clean"], &format!("options_file={}", f.display()));
    assert!(r.stderr.contains("files name each other more than 3 deep"), "{}", r.stderr);
    assert_eq!(r.status, Some(0));
}

#[test]
fn gcc_and_make_complete_with_leak_exitcode_zero() {
    if !have("gcc") || !have("make") {
        return;
    }
    let d = dir("gcc");
    std::fs::write(d.join("a.c"), "int twice(int x) { return 2 * x; }\n").unwrap();
    std::fs::write(
        d.join("main.c"),
        "#include <stdio.h>\nint twice(int);\nint main(void) { printf(\"%d\\n\", twice(21)); return 0; }\n",
    )
    .unwrap();
    std::fs::write(
        d.join("Makefile"),
        "prog: main.o a.o\n\tgcc -O2 -o $@ $^\n%.o: %.c\n\tgcc -O2 -c $< -o $@\n",
    )
    .unwrap();
    let env = |c: &mut Command| {
        c.current_dir(&d).env("LD_PRELOAD", lib()).env("UKASAN_OPTIONS", "leak_exitcode=0");
    };
    let mut gcc = Command::new("gcc");
    gcc.args(["-O2", "-c", "a.c", "-o", "single.o"]);
    env(&mut gcc);
    let o = gcc.output().unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "{err}");
    assert!(d.join("single.o").is_file());
    assert!(
        split_reports(&err).iter().all(|r| r.kind() == "memory-leak"),
        "only gcc's own leaks: {err}"
    );
    let mut make = Command::new("make");
    env(&mut make);
    let o = make.output().unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let out = Command::new(d.join("prog")).output().unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout), "42\n");
}
