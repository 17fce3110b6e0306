//! Records which commit this build is made from (and that commit's date), for `capstan version` and `/version`.
//!
//! The commit's date rather than the clock's: a rebuild of the same commit is the same build, and nothing is
//! rebuilt just because time passed. Outside a Git checkout both read `unknown`.

use std::process::Command;

fn git(args: &[&str]) -> Option<String> {
    let out = Command::new("git").args(args).output().ok()?;
    let s = String::from_utf8(out.stdout).ok()?.trim().to_string();
    (out.status.success() && !s.is_empty()).then_some(s)
}

fn main() {
    let commit = git(&["rev-parse", "--short=12", "HEAD"]).unwrap_or_else(|| "unknown".into());
    let date = git(&["log", "-1", "--format=%cI"]).unwrap_or_else(|| "unknown".into());
    println!("cargo:rustc-env=CAPSTAN_COMMIT={commit}");
    println!("cargo:rustc-env=CAPSTAN_COMMIT_DATE={date}");
    // A new commit or a checkout changes HEAD, or the branch it names: a loose ref under refs/heads (watched as a
    // directory, since a ref may not exist as a file yet) or packed-refs. Only paths that exist are named: cargo
    // reruns a build script whose watched path is missing every time.
    if let (Some(dir), Some(common)) =
        (git(&["rev-parse", "--absolute-git-dir"]), git(&["rev-parse", "--path-format=absolute", "--git-common-dir"]))
    {
        for path in [format!("{dir}/HEAD"), format!("{common}/refs/heads"), format!("{common}/packed-refs")] {
            if std::path::Path::new(&path).exists() {
                println!("cargo:rerun-if-changed={path}");
            }
        }
    }
    println!("cargo:rerun-if-changed=build.rs");
}
