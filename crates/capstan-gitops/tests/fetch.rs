//! Fetches from real repositories built with the git CLI, over file://.
#![allow(clippy::unwrap_used, clippy::expect_used)] // a test: a failed step is the failure it reports

use std::path::Path;
use std::process::Command;
use std::sync::atomic::AtomicBool;

use capstan_gitops::git::{fetch, write_commit, Credentials, FetchRequest, GitError};
use capstan_model::gitops::GitRef;

fn git(dir: &Path, args: &[&str]) -> String {
    let out = Command::new("git")
        .args(args)
        .current_dir(dir)
        .env("GIT_AUTHOR_NAME", "t")
        .env("GIT_AUTHOR_EMAIL", "t@example.com")
        .env("GIT_COMMITTER_NAME", "t")
        .env("GIT_COMMITTER_EMAIL", "t@example.com")
        .output()
        .expect("git runs");
    assert!(out.status.success(), "git {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

fn commit(dir: &Path, file: &str, content: &str) -> String {
    let p = dir.join(file);
    std::fs::create_dir_all(p.parent().unwrap()).unwrap();
    std::fs::write(p, content).unwrap();
    git(dir, &["add", "-A"]);
    git(dir, &["commit", "-q", "-m", file]);
    git(dir, &["rev-parse", "HEAD"])
}

fn request<'a>(url: &'a str, r: &'a GitRef, repo: &'a Path, stop: &'a AtomicBool) -> FetchRequest<'a> {
    FetchRequest {
        url,
        git_ref: r,
        repo_dir: repo,
        credentials: &Credentials::None,
        interrupt: stop,
        timeout: std::time::Duration::from_secs(20),
    }
}

#[test]
fn follows_a_branch_incrementally_and_survives_force_push_and_deletion() {
    let up = tempfile::tempdir().unwrap();
    git(up.path(), &["init", "-q", "-b", "main"]);
    let c1 = commit(up.path(), "deploy/app.yaml", "one\n");
    let url = format!("file://{}", up.path().display());
    let local = tempfile::tempdir().unwrap();
    let repo = local.path().join("repo.git");
    let stop = AtomicBool::new(false);
    let main = GitRef { branch: Some("main".into()), ..Default::default() };

    let f = fetch(&request(&url, &main, &repo, &stop)).unwrap();
    assert_eq!(f.commit, c1);
    assert_eq!(f.revision, format!("main@sha1:{c1}"));
    assert!(f.transferred);
    let again = fetch(&request(&url, &main, &repo, &stop)).unwrap();
    assert!(!again.transferred, "an unchanged branch transfers nothing");

    let c2 = commit(up.path(), "deploy/app.yaml", "two\n");
    let f2 = fetch(&request(&url, &main, &repo, &stop)).unwrap();
    assert_eq!(f2.commit, c2);
    let a = write_commit(&repo, &f2.commit, local.path(), None, None).unwrap();
    assert_eq!(std::fs::read_to_string(a.dir.join("deploy/app.yaml")).unwrap(), "two\n");

    // The next revision shares unchanged files with this one (hard links) and digests the same as a fresh write.
    commit(up.path(), "deploy/other.yaml", "other\n");
    let f2b = fetch(&request(&url, &main, &repo, &stop)).unwrap();
    assert!(f2b.transferred);
    let linked = write_commit(&repo, &f2b.commit, local.path(), None, Some(&a.dir)).unwrap();
    let fresh_root = tempfile::tempdir().unwrap();
    let fresh = write_commit(&repo, &f2b.commit, fresh_root.path(), None, None).unwrap();
    assert_eq!(linked.digest, fresh.digest);
    use std::os::unix::fs::MetadataExt;
    let ino = |p: &Path| std::fs::metadata(p).unwrap().ino();
    assert_eq!(ino(&a.dir.join("deploy/app.yaml")), ino(&linked.dir.join("deploy/app.yaml")));
    assert_eq!(std::fs::read_to_string(linked.dir.join("deploy/other.yaml")).unwrap(), "other\n");
    assert!(std::fs::metadata(linked.dir.join("deploy/app.yaml")).unwrap().permissions().readonly());

    // Force-push: the branch moves to an unrelated commit.
    git(up.path(), &["checkout", "-q", "--orphan", "rewrite"]);
    let c3 = commit(up.path(), "other.yaml", "three\n");
    git(up.path(), &["branch", "-f", "main", "rewrite"]);
    let f3 = fetch(&request(&url, &main, &repo, &stop)).unwrap();
    assert_eq!(f3.commit, c3);

    let gone = GitRef { branch: Some("nope".into()), ..Default::default() };
    match fetch(&request(&url, &gone, &repo, &stop)) {
        Err(GitError::RefNotFound(m)) => assert!(m.contains("branch `nope`"), "{m}"),
        other => panic!("expected RefNotFound, got {other:?}"),
    }
}

#[test]
fn tags_semver_commits_and_head() {
    let up = tempfile::tempdir().unwrap();
    git(up.path(), &["init", "-q", "-b", "trunk"]);
    let c1 = commit(up.path(), "a.yaml", "1\n");
    git(up.path(), &["tag", "v1.0.0"]);
    let c2 = commit(up.path(), "a.yaml", "2\n");
    git(up.path(), &["tag", "-a", "v1.4.2", "-m", "annotated"]);
    let _c3 = commit(up.path(), "a.yaml", "3\n");
    git(up.path(), &["tag", "v2.0.0"]);
    let url = format!("file://{}", up.path().display());
    let local = tempfile::tempdir().unwrap();
    let stop = AtomicBool::new(false);

    let semver = GitRef { semver: Some(">=1.0.0, <2.0.0".into()), ..Default::default() };
    let f = fetch(&request(&url, &semver, &local.path().join("r1"), &stop)).unwrap();
    assert_eq!(f.revision, format!("v1.4.2@sha1:{c2}"), "annotated tags peel to their commit");

    let tag = GitRef { tag: Some("v1.0.0".into()), ..Default::default() };
    assert_eq!(fetch(&request(&url, &tag, &local.path().join("r2"), &stop)).unwrap().commit, c1);

    let pinned = GitRef { commit: Some(c1.clone()), ..Default::default() };
    let f = fetch(&request(&url, &pinned, &local.path().join("r3"), &stop)).unwrap();
    assert_eq!(f.revision, format!("sha1:{c1}"));

    let head = GitRef::default();
    let f = fetch(&request(&url, &head, &local.path().join("r4"), &stop)).unwrap();
    assert!(f.revision.starts_with("trunk@sha1:"), "{}", f.revision);
}

#[test]
fn symlinks_outside_and_large_files_are_left_out() {
    let up = tempfile::tempdir().unwrap();
    git(up.path(), &["init", "-q", "-b", "main"]);
    std::fs::write(up.path().join("app.yaml"), "x\n").unwrap();
    std::os::unix::fs::symlink("/etc/passwd", up.path().join("passwd.yaml")).unwrap();
    std::os::unix::fs::symlink("app.yaml", up.path().join("alias.yaml")).unwrap();
    let big = vec![b'a'; 17 * 1024 * 1024];
    std::fs::write(up.path().join("big.yaml"), big).unwrap();
    let c = commit(up.path(), "readme.txt", "hi\n");
    let url = format!("file://{}", up.path().display());
    let local = tempfile::tempdir().unwrap();
    let repo = local.path().join("repo.git");
    let stop = AtomicBool::new(false);
    let main = GitRef { branch: Some("main".into()), ..Default::default() };
    fetch(&request(&url, &main, &repo, &stop)).unwrap();
    let a = write_commit(&repo, &c, local.path(), None, None).unwrap();
    assert!(a.dir.join("app.yaml").is_file());
    assert_eq!(std::fs::read_to_string(a.dir.join("alias.yaml")).unwrap(), "x\n");
    assert!(!a.dir.join("passwd.yaml").exists());
    assert!(!a.dir.join("big.yaml").exists());
    let w = a.warnings.join("\n");
    assert!(w.contains("passwd.yaml -> /etc/passwd"), "{w}");
    assert!(w.contains("big.yaml is 17 MiB"), "{w}");
}

#[test]
fn an_unreachable_remote_is_a_remote_error() {
    let local = tempfile::tempdir().unwrap();
    let stop = AtomicBool::new(false);
    let main = GitRef { branch: Some("main".into()), ..Default::default() };
    // Port 9 (discard) on loopback: nothing listens, the connection is refused at once.
    let url = "git://127.0.0.1:9/nothing.git";
    match fetch(&request(url, &main, &local.path().join("r"), &stop)) {
        Err(GitError::Remote(m)) => assert!(!m.is_empty()),
        other => panic!("expected a remote error, got {other:?}"),
    }
}
