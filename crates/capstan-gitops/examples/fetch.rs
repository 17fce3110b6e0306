//! Fetches a branch and writes its artifact, as a Source does: `fetch URL BRANCH DIR`. Used by bench/gitops.sh to
//! time gix against the git CLI; prints the revision and the milliseconds each step took.
#![allow(clippy::unwrap_used, clippy::expect_used)] // a measuring tool: a failed step ends the run, saying which

use std::path::Path;
use std::sync::atomic::AtomicBool;
use std::time::Instant;

use capstan_gitops::git::{fetch, write_commit, Credentials, FetchRequest};
use capstan_model::gitops::GitRef;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    let [_, url, branch, dir] = args.as_slice() else {
        return Err("usage: fetch URL BRANCH DIR".into());
    };
    let root = Path::new(dir);
    let git_ref = GitRef { branch: Some(branch.clone()), ..Default::default() };
    let stop = AtomicBool::new(false);
    let t0 = Instant::now();
    let repo_dir = root.join("repo.git");
    let f = fetch(&FetchRequest {
        url,
        git_ref: &git_ref,
        repo_dir: &repo_dir,
        credentials: &Credentials::None,
        interrupt: &stop,
        timeout: std::time::Duration::from_secs(60),
    })?;
    let t1 = Instant::now();
    // As a Source does: share unchanged files with the newest artifact already here.
    let previous = std::fs::read_dir(root.join("artifacts"))
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| Some((e.metadata().ok()?.modified().ok()?, e.path())))
        .max()
        .map(|(_, p)| p);
    let w = write_commit(&repo_dir, &f.commit, root, None, previous.as_deref())?;
    let t2 = Instant::now();
    println!(
        "{{\"revision\":\"{}\",\"files\":{},\"fetch_ms\":{:.1},\"checkout_ms\":{:.1}}}",
        f.revision,
        w.files,
        (t1 - t0).as_secs_f64() * 1e3,
        (t2 - t1).as_secs_f64() * 1e3
    );
    Ok(())
}
