//! The real `capstan` binary: restarts that re-adopt replicas, clean exits that leave nothing behind, CLI contracts.

use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use capstan_e2e::*;
use serde_json::Value;

const T: Duration = Duration::from_secs(30);

fn capstan(data: &Path, args: &[&str]) -> Output {
    cli_at(data, args)
}

fn up(data: &Path, manifests: &Path) -> Guarded {
    let child = Command::new(bin("capstan-e2e-cli"))
        .args(["up", "--listen", "127.0.0.1:0"])
        .arg(manifests)
        .env("CAPSTAN_DATA", data)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start capstan up");
    Guarded(child)
}

fn get_app(data: &Path, name: &str) -> Option<Value> {
    let out = capstan(data, &["get", "app", name, "-o", "json"]);
    if !out.status.success() {
        return None;
    }
    serde_json::from_slice(&out.stdout).ok()
}

async fn ready_pids(data: &Path, name: &str, n: usize) -> Vec<u32> {
    eventually(&format!("{name} Ready with {n} replicas"), T, || async {
        let o = get_app(data, name)?;
        let pids: Vec<u32> = replicas(&o).iter().filter_map(|r| r["pid"].as_u64().map(|p| p as u32)).collect();
        (ready(&o) && pids.len() == n).then_some(pids)
    })
    .await
}

fn write_manifest(dir: &Path, marker: &str) -> std::path::PathBuf {
    let path = dir.join("apps.yaml");
    let yaml = app_yaml("svc", 2, &[("TESTAPP_SPAWN_CHILD", "1"), ("E2E_MARKER", marker)], READINESS);
    std::fs::write(&path, yaml).unwrap();
    path
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restart_after_sigkill_readopts_replicas_without_duplicates() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let marker = format!("readopt-{}", std::process::id());
    let manifest = write_manifest(dir.path(), &marker);
    let mut first = up(&data, &manifest);
    let pids = ready_pids(&data, "svc", 2).await;

    // Capstan dies hard; its replicas must keep running.
    first.kill().unwrap();
    first.wait().unwrap();
    assert!(pids.iter().all(|p| alive(*p)), "replicas survive Capstan's death");

    let mut second = up(&data, &manifest);
    let again = ready_pids(&data, "svc", 2).await;
    assert_eq!(again, pids, "the same processes were adopted");
    let o = get_app(&data, "svc").unwrap();
    assert_eq!(o["status"]["restarts"], 0);
    let marker_env = format!("E2E_MARKER={marker}");
    // Two replicas and one `sleep` child each: nothing was duplicated.
    assert_eq!(processes_with_env(&marker_env).len(), 4, "{:?}", processes_with_env(&marker_env));

    // An adopted replica that dies is still noticed and replaced.
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(pids[0] as i32), nix::sys::signal::Signal::SIGKILL).unwrap();
    eventually("adopted replica replaced", T, || async {
        let o = get_app(&data, "svc")?;
        let r = replicas(&o).first().cloned()?;
        (ready(&o) && r["pid"].as_u64() != Some(u64::from(pids[0])) && r["restarts"] == 1).then_some(())
    })
    .await;
    let logs = capstan(&data, &["logs", "svc", "--replica", "1"]);
    assert!(String::from_utf8_lossy(&logs.stdout).contains("svc-1 listening"), "logs survive the restart");

    // SIGINT (Ctrl-C): every replica and every child of a replica is gone when capstan exits.
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(second.id() as i32), nix::sys::signal::Signal::SIGINT).unwrap();
    let status = second.wait().unwrap();
    assert!(status.success(), "capstan exits 0 after Ctrl-C: {status}");
    eventually("no process left", T, || async { processes_with_env(&marker_env).is_empty().then_some(()) }).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_keeping_workloads_then_up_adopts_them() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let marker = format!("keep-{}", std::process::id());
    let manifest = write_manifest(dir.path(), &marker);
    let mut first = up(&data, &manifest);
    let pids = ready_pids(&data, "svc", 2).await;
    let out = capstan(&data, &["shutdown", "--keep-workloads"]);
    assert!(out.status.success());
    assert!(first.wait().unwrap().success());
    assert!(pids.iter().all(|p| alive(*p)));
    let mut second = up(&data, &manifest);
    assert_eq!(ready_pids(&data, "svc", 2).await, pids);
    let out = capstan(&data, &["shutdown"]);
    assert!(out.status.success());
    assert!(second.wait().unwrap().success());
    let marker_env = format!("E2E_MARKER={marker}");
    eventually("no process left", T, || async { processes_with_env(&marker_env).is_empty().then_some(()) }).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cli_contracts_exit_codes_and_errors_with_file_and_line() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let good = dir.path().join("good.yaml");
    std::fs::write(&good, app_yaml("cli", 1, &[], READINESS)).unwrap();
    let mut plane = up(&data, &good);
    ready_pids(&data, "cli", 1).await;

    // get: table, json, yaml.
    let out = capstan(&data, &["get", "apps"]);
    let table = String::from_utf8_lossy(&out.stdout);
    assert!(table.starts_with("NAME   READY   STATUS    RESTARTS   AGE"), "{table}");
    assert!(table.contains("cli    1/1     Running   0"), "{table}");
    let yaml = capstan(&data, &["get", "apps", "-o", "yaml"]);
    let parsed = capstan_model::yaml::parse_documents(&String::from_utf8_lossy(&yaml.stdout)).unwrap();
    assert_eq!(parsed[0].value["items"][0]["metadata"]["name"], "cli");
    assert_eq!(parsed[0].value["items"][0]["status"]["readyReplicas"], 1);

    // diff: 0 without changes, 1 with.
    assert_eq!(capstan(&data, &["diff", "-f", good.to_str().unwrap()]).status.code(), Some(0));
    let changed = dir.path().join("changed.yaml");
    std::fs::write(&changed, app_yaml("cli", 3, &[], READINESS)).unwrap();
    let out = capstan(&data, &["diff", "-f", changed.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stdout).contains("    spec.replicas: 1 → 3"));
    // The same manifest from another directory: apply would move where relative paths start, and diff says so.
    let elsewhere = dir.path().join("elsewhere");
    std::fs::create_dir_all(&elsewhere).unwrap();
    std::fs::write(elsewhere.join("good.yaml"), app_yaml("cli", 1, &[], READINESS)).unwrap();
    let out = capstan(&data, &["diff", "-f", elsewhere.join("good.yaml").to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1), "{}", String::from_utf8_lossy(&out.stdout));
    assert!(String::from_utf8_lossy(&out.stdout).contains("metadata.annotations.capstan.dev/base-dir"));

    // A bad batch: exit 2, every error with file, line and field, and nothing applied.
    let bad = dir.path().join("bad.yaml");
    let text = format!(
        "{}---\n{}",
        app_yaml("fine", 1, &[], ""),
        app_yaml("Bad_Name", -1, &[], "  probes:\n    readiness: {tcp: {port: admin}}\n")
    );
    std::fs::write(&bad, text).unwrap();
    let out = capstan(&data, &["apply", "-f", bad.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.trim_end().ends_with("(the batch was refused; nothing was applied)"), "{err}");
    let file = bad.display().to_string();
    assert!(err.contains(&format!("{file}:19:3: App/Bad_Name: field `metadata.name`")), "{err}");
    assert!(err.contains("field `spec.replicas`: must not be negative"), "{err}");
    assert!(err.contains("field `spec.probes.readiness.tcp.port`: names unknown port `admin`"), "{err}");
    assert!(capstan(&data, &["get", "app", "fine"]).status.code() == Some(1), "nothing from the bad batch was applied");

    // A missing program is refused at apply time with the line of the command.
    let missing = dir.path().join("missing.yaml");
    std::fs::write(&missing, app_yaml("ghost", 1, &[], "").replace(&testapp(), "./not-built-yet")).unwrap();
    let out = capstan(&data, &["apply", "-f", missing.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains(":8:15: App/ghost: field `spec.run.command[0]`: program"), "{err}");
    assert!(err.contains("does not exist"), "{err}");

    // Replicas sharing a fixed port: refused on one machine (on a cluster each pod has its own address).
    let shared = dir.path().join("shared.yaml");
    std::fs::write(
        &shared,
        app_yaml("shared", 2, &[], "").replace("    - name: http\n", "    - name: http\n      port: 18555\n"),
    )
    .unwrap();
    let out = capstan(&data, &["apply", "-f", shared.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("shared.yaml:") && err.contains("App/shared: field `spec.ports[0].port`"), "{err}");
    assert!(err.contains("fixed port 18555 cannot be shared by 2 replicas on one machine"), "{err}");

    // An entry point on a port another process holds is refused with its line.
    let holder = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let taken = holder.local_addr().unwrap().port();
    let clash = dir.path().join("clash.yaml");
    std::fs::write(&clash, app_yaml("clash", 1, &[], &format!("  expose:\n    - port: {taken}\n"))).unwrap();
    let out = capstan(&data, &["apply", "-f", clash.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains(&format!(":16:7: App/clash: field `spec.expose[0].port`: port {taken} is in use")), "{err}");
    assert!(err.contains(&format!("by pid {}", std::process::id())), "the holder is named: {err}");

    // Not found is exit 1; an unknown type is exit 2.
    assert_eq!(capstan(&data, &["get", "app", "nope"]).status.code(), Some(1));
    assert_eq!(capstan(&data, &["describe", "widgets", "x"]).status.code(), Some(2));

    // describe shows replicas and events.
    let out = capstan(&data, &["describe", "app", "cli"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("cli-0") && text.contains("Started"), "{text}");

    // No control plane: a clear error and exit 1.
    let out = capstan(&data, &["shutdown"]);
    assert!(out.status.success());
    plane.wait().unwrap();
    let out = capstan(&data, &["get", "apps"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("cannot reach the Capstan API"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn up_refuses_a_bad_manifest_before_starting_anything() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let bad = dir.path().join("bad.yaml");
    std::fs::write(&bad, app_yaml("x", 1, &[], "  replcas: 2\n")).unwrap();
    let out = Command::new(bin("capstan-e2e-cli"))
        .args(["up", "--listen", "127.0.0.1:0"])
        .arg(&bad)
        .env("CAPSTAN_DATA", &data)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("field `spec.replcas`: unknown field"), "{err}");
    assert!(err.contains("did you mean `replicas`?"), "{err}");
    assert!(!data.join("state.redb").exists(), "nothing was started");

    // A manifest only the server can refuse (its program does not exist) is refused before the API or any
    // controller starts.
    let ghost = dir.path().join("ghost.yaml");
    std::fs::write(&ghost, app_yaml("ghost", 1, &[], "").replace(&testapp(), "./not-built-yet")).unwrap();
    let out = Command::new(bin("capstan-e2e-cli"))
        .args(["up", "--listen", "127.0.0.1:0"])
        .arg(&ghost)
        .env("CAPSTAN_DATA", &data)
        .env("CAPSTAN_LOG", "info")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("App/ghost: field `spec.run.command[0]`: program"), "{err}");
    assert!(err.contains("(the batch was refused; nothing was started)"), "{err}");
    assert!(!err.contains("control plane is up"), "{err}");
    assert!(!data.join("server.json").exists(), "the API never listened");
}

/// kubectl's habits: version (client and server), explain, completion, scale, get events (and --watch), apply
/// --dry-run=client|server that changes nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubectl_habits_version_explain_completion_scale_events_and_dry_run() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let m = dir.path().join("app.yaml");
    std::fs::write(&m, app_yaml("habits", 1, &[], READINESS)).unwrap();
    let mut plane = up(&data, &m);
    ready_pids(&data, "habits", 1).await;

    let out = capstan(&data, &["version"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let commit = capstan_api::build_info()["commit"].as_str().unwrap().to_string();
    assert!(text.contains(&format!("Client Version: {} (commit {commit}", env!("CARGO_PKG_VERSION"))), "{text}");
    assert!(text.contains("Server Version: ") && text.matches(&commit).count() == 2, "{text}");
    let v: Value = serde_json::from_slice(&capstan(&data, &["version", "-o", "json"]).stdout).unwrap();
    assert_eq!(v["serverVersion"]["commit"], v["clientVersion"]["commit"]);

    let out = capstan(&data, &["explain", "app.spec.update"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("FIELD:      spec.update <") && text.contains("FIELDS:"), "{text}");
    assert!(text.contains("  maxUnavailable\t<") || text.contains("  strategy\t<"), "{text}");
    let out = capstan(&data, &["explain", "app.spec.replcas"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("field `replcas` does not exist in spec"));

    let out = capstan(&data, &["completion", "bash"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success() && text.contains("complete -F") && text.contains("capstan"), "{text}");
    for (shell, marker) in [("zsh", "#compdef capstan"), ("fish", "complete -c capstan")] {
        let out = capstan(&data, &["completion", shell]);
        assert!(String::from_utf8_lossy(&out.stdout).contains(marker), "{shell}");
    }
    // Help: `get` names every kind it takes and what NAME and -n mean; the commands most used come first.
    let help = String::from_utf8_lossy(&capstan(&data, &["get", "--help"]).stdout).to_string();
    for k in capstan_model::Kind::ALL.iter().map(|k| k.plural()).chain(["events"]) {
        assert!(help.contains(k), "get --help names {k}: {help}");
    }
    assert!(help.contains("One object's name") && help.contains("The namespace to look in"), "{help}");
    let help = String::from_utf8_lossy(&capstan(&data, &["--help"]).stdout).to_string();
    let at = |c: &str| help.find(&format!("\n  {c} ")).unwrap_or_else(|| panic!("{c} in: {help}"));
    assert!(at("get") < at("describe") && at("describe") < at("logs") && at("apply") < at("up"), "{help}");
    assert!(at("up") < at("serve-model") && at("serve-model") < at("version"), "{help}");

    // Dry runs change nothing: the App stays at one replica.
    let two = dir.path().join("two.yaml");
    std::fs::write(&two, app_yaml("habits", 2, &[], READINESS)).unwrap();
    let out = capstan(&data, &["apply", "-f", two.to_str().unwrap(), "--dry-run=server"]);
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "app/habits configured (dry run: server)");
    let out = capstan(&data, &["apply", "-f", two.to_str().unwrap(), "--dry-run=client"]);
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "app/habits checked (dry run: client)");
    let ghost = dir.path().join("ghost.yaml");
    std::fs::write(&ghost, app_yaml("ghost", 1, &[], "").replace(&testapp(), "./not-built-yet")).unwrap();
    let out = capstan(&data, &["apply", "-f", ghost.to_str().unwrap(), "--dry-run=server"]);
    assert_eq!(out.status.code(), Some(2), "the server's admission runs in a server dry run");
    assert_eq!(get_app(&data, "habits").unwrap()["spec"]["replicas"], 1);
    assert_eq!(capstan(&data, &["get", "app", "ghost"]).status.code(), Some(1));
    // --wait counts objects, not replicas.
    let out = capstan(&data, &["apply", "-f", two.to_str().unwrap(), "--wait"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success() && err.lines().last() == Some("the object is Ready"), "{err}");
    // Progress counts objects ("0 of 1 object Ready; waiting for app/habits: …"), never a bare "1/2 ready".
    assert!(err.lines().all(|l| l.contains(" object") && !l.ends_with("/2 ready")), "{err}");
    assert_eq!(err.matches("the object is Ready").count(), 1, "{err}");
    ready_pids(&data, "habits", 2).await;
    assert!(capstan(&data, &["scale", "app/habits", "--replicas", "1"]).status.success());
    ready_pids(&data, "habits", 1).await;

    // Events are followed while scale changes the App.
    let mut watch = Command::new(bin("capstan-e2e-cli"))
        .args(["get", "events", "--watch"])
        .env("CAPSTAN_DATA", &data)
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let out = capstan(&data, &["scale", "app/habits", "--replicas", "2"]);
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "app/habits scaled from 1 to 2 replicas");
    ready_pids(&data, "habits", 2).await;
    let out = capstan(&data, &["scale", "habits", "--replicas", "-1"]);
    assert_eq!(out.status.code(), Some(2), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stderr).contains("field `spec.replicas`"));
    let out = capstan(&data, &["get", "events"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.starts_with("LAST SEEN") && text.contains("app/habits") && text.contains("habits-1"), "{text}");
    let _ = watch.kill();
    let watched = String::from_utf8_lossy(&watch.wait_with_output().unwrap().stdout).to_string();
    assert!(watched.starts_with("LAST SEEN") && watched.contains("habits-1"), "{watched}");

    assert!(capstan(&data, &["shutdown"]).status.success());
    plane.wait().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rollout_commands_restart_status_history_and_undo() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let v1 = dir.path().join("v1.yaml");
    std::fs::write(&v1, app_yaml("roll", 2, &[("VERSION", "1")], READINESS)).unwrap();
    let mut plane = up(&data, &v1);
    ready_pids(&data, "roll", 2).await;
    let v2 = dir.path().join("v2.yaml");
    std::fs::write(&v2, app_yaml("roll", 2, &[("VERSION", "2")], READINESS)).unwrap();
    assert!(capstan(&data, &["apply", "-f", v2.to_str().unwrap()]).status.success());
    let out = capstan(&data, &["rollout", "status", "roll", "--timeout", "60s"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stdout).contains("successfully rolled out"));
    let rev2 = get_app(&data, "roll").unwrap()["status"]["revision"].as_str().unwrap().to_string();

    let out = capstan(&data, &["rollout", "history", "roll"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.starts_with("REVISION"), "{text}");
    assert_eq!(text.lines().count(), 3, "two revisions: {text}");
    assert!(text.lines().any(|l| l.starts_with(&rev2) && l.contains("spec,current")), "{text}");
    // The CAUSE says what made each revision (kubectl's change-cause).
    assert!(text.lines().any(|l| l.starts_with(&rev2) && l.contains("changed run.env.VERSION")), "{text}");
    assert!(text.lines().any(|l| !l.starts_with(&rev2) && l.contains("created")), "{text}");

    // Undo writes revision 1's spec back: VERSION is 1 again, as a new generation.
    let out = capstan(&data, &["rollout", "undo", "roll"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(capstan(&data, &["rollout", "status", "roll"]).status.success());
    let o = get_app(&data, "roll").unwrap();
    assert_eq!(o["spec"]["run"]["env"]["VERSION"], "1");
    assert_eq!(o["metadata"]["generation"], 3);

    // Restart replaces every replica without changing the spec.
    let before = ready_pids(&data, "roll", 2).await;
    assert!(capstan(&data, &["rollout", "restart", "roll"]).status.success());
    assert!(capstan(&data, &["rollout", "status", "roll"]).status.success());
    let after = ready_pids(&data, "roll", 2).await;
    assert!(before.iter().all(|p| !after.contains(p)), "every replica was replaced: {before:?} -> {after:?}");
    let o = get_app(&data, "roll").unwrap();
    assert_eq!(o["spec"]["run"]["env"]["VERSION"], "1");
    // A later apply of the same manifest keeps the restart (no second round of replacements).
    std::fs::write(&v1, app_yaml("roll", 2, &[("VERSION", "1")], READINESS)).unwrap();
    let out = capstan(&data, &["apply", "-f", v1.to_str().unwrap()]);
    assert!(String::from_utf8_lossy(&out.stdout).contains("unchanged"), "{}", String::from_utf8_lossy(&out.stdout));

    assert!(capstan(&data, &["rollout", "undo", "nope"]).status.code() == Some(1));
    assert!(capstan(&data, &["shutdown"]).status.success());
    plane.wait().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gitops_from_the_command_line_up_git_build_diff_and_sync_now() {
    use capstan_e2e::git::{self, GitRepo};
    let repo = GitRepo::new();
    let web = app_yaml("gweb", 1, &[], READINESS);
    repo.commit(&[("deploy/web.yaml", Some(&web))], "v1");
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let child = Command::new(bin("capstan-e2e-cli"))
        .args(["up", "--listen", "127.0.0.1:0", "--git", &repo.file_url(), "--path", "./deploy"])
        .env("CAPSTAN_DATA", &data)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start capstan up --git");
    let _up = Guarded(child);
    ready_pids(&data, "gweb", 1).await;

    // build: substitution and validation, offline.
    let deploy = repo.path().join("deploy");
    let tmpl = dir.path().join("tmpl");
    std::fs::create_dir(&tmpl).unwrap();
    std::fs::write(tmpl.join("web.yaml"), web.replace("replicas: 1", "replicas: ${REPLICAS:=1}")).unwrap();
    let out = capstan(&data, &["build", tmpl.to_str().unwrap(), "--var", "REPLICAS=4", "-o", "json"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let built: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(built[0]["spec"]["replicas"], 4);

    // diff against what the bootstrap Sync applied: nothing, then a field-level change and a deletion.
    let sync_args = ["--sync", "bootstrap", "-n", "capstan-system"];
    let diff = |args: &[&str]| capstan(&data, &[&["diff", deploy.to_str().unwrap()], args].concat());
    let out = diff(&sync_args);
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stdout));
    std::fs::write(deploy.join("web.yaml"), web.replace("replicas: 1", "replicas: 2")).unwrap();
    let out = diff(&sync_args);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stdout).contains("~ App/default/gweb changed\n    spec.replicas: 1 → 2"));
    std::fs::rename(deploy.join("web.yaml"), deploy.join("web.txt")).unwrap();
    std::fs::write(deploy.join("other.yaml"), app_yaml("gother", 1, &[], "")).unwrap();
    let out = diff(&sync_args);
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(text.contains("+ App/default/gother created") && text.contains("- App/default/gweb deleted"), "{text}");
    std::fs::rename(deploy.join("web.txt"), deploy.join("web.yaml")).unwrap();
    std::fs::remove_file(deploy.join("other.yaml")).unwrap();

    // A broken build is exit 2 with file and line.
    std::fs::write(
        deploy.join("bad.yaml"),
        "apiVersion: capstan.dev/v1alpha1\nkind: App\nmetadata: {name: x}\nspec: {runn: {}}\n",
    )
    .unwrap();
    let out = capstan(&data, &["build", deploy.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("bad.yaml:4:"), "{}", String::from_utf8_lossy(&out.stderr));
    std::fs::remove_file(deploy.join("bad.yaml")).unwrap();

    // sync now: the committed change is applied before the command returns.
    repo.commit(&[], "scale to 2");
    assert!(git::git(repo.path(), &["show", "--stat", "HEAD"]).contains("web.yaml"));
    let out = capstan(&data, &["sync", "now", "bootstrap", "-n", "capstan-system"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stdout).contains("✔ sync/bootstrap: main@sha1:"));
    assert_eq!(get_app(&data, "gweb").unwrap()["spec"]["replicas"], 2);
    let out = capstan(&data, &["get", "syncs", "-A"]);
    assert!(String::from_utf8_lossy(&out.stdout).contains("Applied revision: main@sha1:"));
    let out = capstan(&data, &["describe", "sync", "bootstrap", "-n", "capstan-system"]);
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(text.contains("Inventory:") && text.contains("App/default/gweb") && text.contains("History:"), "{text}");
    // sync now on a suspended Sync says so at once instead of waiting for a reconcile that never comes.
    let paused = dir.path().join("paused.yaml");
    std::fs::write(
        &paused,
        "apiVersion: capstan.dev/v1alpha1\nkind: Sync\nmetadata: {name: paused, namespace: capstan-system}\n\
         spec: {sourceRef: {name: bootstrap}, path: ./nothing, suspend: true}\n",
    )
    .unwrap();
    assert!(capstan(&data, &["apply", "-f", paused.to_str().unwrap()]).status.success());
    let started = std::time::Instant::now();
    let out = capstan(&data, &["sync", "now", "paused", "-n", "capstan-system"]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr).to_string();
    assert!(err.contains("sync/paused is suspended"), "{err}");
    assert!(started.elapsed() < Duration::from_secs(20), "answered at once, not after the 5-minute wait");
    assert!(capstan(&data, &["shutdown"]).status.success());
}

#[test]
fn metrics_lint_reports_line_and_reason() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let good = dir.path().join("good.prom");
    std::fs::write(&good, "# HELP jobs_total Jobs run.\n# TYPE jobs_total counter\njobs_total{queue=\"a\"} 3\n")
        .unwrap();
    let out = capstan(&data, &["metrics", "lint", good.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stdout));
    let bad = dir.path().join("bad.prom");
    std::fs::write(&bad, "# TYPE jobs counter\njobs 1\njobs{queue=\"a\" 2\n").unwrap();
    let out = capstan(&data, &["metrics", "lint", bad.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(text.contains("bad.prom:3:5: error: expected labels"), "{text}");
    let lints = dir.path().join("lints.prom");
    std::fs::write(&lints, "# TYPE jobs counter\njobs 1\n").unwrap();
    let out = capstan(&data, &["metrics", "lint", lints.to_str().unwrap()]);
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    assert_eq!(out.status.code(), Some(1));
    assert!(text.contains("lints.prom:1: lint: jobs: no help text"), "{text}");
    assert!(text.contains("counter metrics should have \"_total\" suffix"), "{text}");
    assert_eq!(capstan(&data, &["metrics", "lint", "/nonexistent.prom"]).status.code(), Some(2));
}

#[test]
fn render_for_kubernetes_from_the_command_line() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let app = dir.path().join("app.yaml");
    std::fs::write(
        &app,
        "apiVersion: capstan.dev/v1alpha1\nkind: App\nmetadata: {name: web}\nspec:\n  replicas: 2\n  run: {image: nginx:1.27}\n  ports: [{name: http}]\n  expose: [{port: 80}]\n",
    )
    .unwrap();
    let out = capstan(&data, &["render", "--target", "kubernetes", app.to_str().unwrap()]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let docs = capstan_model::yaml::parse_documents(&String::from_utf8_lossy(&out.stdout)).unwrap();
    let kinds: Vec<&str> = docs.iter().filter_map(|d| d.value["kind"].as_str()).collect();
    assert_eq!(
        kinds,
        ["NetworkPolicy", "StatefulSet", "Service", "Service", "HTTPRoute", "PodDisruptionBudget", "NetworkPolicy"]
    );
    let out = capstan(&data, &["render", "--ingress-class", "nginx", "-o", "json", app.to_str().unwrap()]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let objects: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let ingress = objects.as_array().unwrap().iter().find(|o| o["kind"] == "Ingress").expect("an Ingress");
    assert_eq!(ingress["spec"]["ingressClassName"], "nginx");
    std::fs::write(
        &app,
        "apiVersion: capstan.dev/v1alpha1\nkind: App\nmetadata: {name: web}\nspec:\n  run: {command: [x]}\n",
    )
    .unwrap();
    let out = capstan(&data, &["render", app.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("app.yaml:5:3: App/web: field `spec.run.image`"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logs_by_label_selector_with_a_regex_filter() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let manifest = dir.path().join("apps.yaml");
    let labelled = |name: &str| {
        app_yaml(name, 1, &[("TESTAPP_LOG_LINES", "5")], READINESS)
            .replace(&format!("  name: {name}\n"), &format!("  name: {name}\n  labels: {{team: blue}}\n"))
    };
    std::fs::write(
        &manifest,
        format!(
            "{}---\n{}---\n{}",
            labelled("alpha"),
            labelled("beta"),
            app_yaml("gamma", 1, &[("TESTAPP_LOG_LINES", "5")], READINESS)
        ),
    )
    .unwrap();
    let _up = up(&data, &manifest);
    for name in ["alpha", "beta", "gamma"] {
        ready_pids(&data, name, 1).await;
    }
    let out = eventually("lines of both labelled Apps", T, || async {
        let out = capstan(&data, &["logs", "-l", "team=blue", "--grep", "line [13] "]);
        let text = String::from_utf8_lossy(&out.stdout).to_string();
        (text.lines().count() == 4).then_some(text)
    })
    .await;
    for want in
        ["[alpha-0] alpha-0 line 1", "[alpha-0] alpha-0 line 3", "[beta-0] beta-0 line 1", "[beta-0] beta-0 line 3"]
    {
        assert!(out.contains(want), "{want} in {out}");
    }
    assert!(!out.contains("gamma") && !out.contains("line 2"), "{out}");
    let out = capstan(&data, &["logs", "-l", "team=red"]);
    assert_eq!(out.status.code(), Some(1));
    let out = capstan(&data, &["logs", "alpha", "--grep", "("]);
    assert_ne!(out.status.code(), Some(0));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("not a regular expression"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(capstan(&data, &["logs"]).status.code(), Some(2));
    assert!(capstan(&data, &["shutdown"]).status.success());
}
