//! `ukasan symbolize`: a raw report from the real detector, symbolized offline.

use std::io::Write;
use std::process::{Command, Stdio};

use crate::{scratch, text, ukasan};

#[test]
fn raw_report_gets_function_names() {
    let dir = scratch("symbolize");
    let src = dir.join("df.c");
    std::fs::write(
        &src,
        "#include <stdlib.h>\n__attribute__((noinline)) void release_twice_here(char *p) { free(p); }\n\
         int main(void) { char *p = malloc(8); release_twice_here(p); release_twice_here(p); return 0; }\n",
    )
    .unwrap();
    let exe = dir.join("df");
    assert!(Command::new("cc")
        .args(["-g", "-O0", "-o"])
        .arg(&exe)
        .arg(&src)
        .status()
        .unwrap()
        .success());
    let o = ukasan()
        .args(["run", "-o", "symbolize=0", "-o", "detect_leaks=0", "--"])
        .arg(&exe)
        .output()
        .unwrap();
    let (_, raw) = text(&o);
    assert!(raw.contains("BUG: KASAN: double-free"), "{raw}");

    let mut child =
        ukasan().arg("symbolize").stdin(Stdio::piped()).stdout(Stdio::piped()).spawn().unwrap();
    child.stdin.take().unwrap().write_all(raw.as_bytes()).unwrap();
    let o = child.wait_with_output().unwrap();
    let (out, err) = text(&o);
    assert!(o.status.success(), "{err}");
    assert!(out.contains("BUG: KASAN: double-free"), "{out}");
    assert!(out.contains("release_twice_here"), "not symbolized:\n{raw}\n---\n{out}");

    // The same from a file argument.
    let f = dir.join("report.txt");
    std::fs::write(&f, &raw).unwrap();
    let o = ukasan().arg("symbolize").arg(&f).output().unwrap();
    assert_eq!(text(&o).0, out);
}
