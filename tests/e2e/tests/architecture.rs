//! The layering of the crates, as ARCHITECTURE.md's table states it: every crate depends on exactly the crates its
//! row names, so a dependency that points the wrong way fails here, and the table stays true. And every kind that
//! names a controller has it running.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// `capstan-*` crates named under `[dependencies]` of a Cargo.toml (dev-dependencies may reach further).
fn dependencies(manifest: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let mut in_deps = false;
    for line in manifest.lines() {
        let line = line.trim();
        if line.starts_with('[') {
            in_deps = line == "[dependencies]";
            continue;
        }
        if in_deps {
            let name = line.split(['=', '.', ' ']).next().unwrap_or("");
            if name.starts_with("capstan-") {
                out.insert(name.to_string());
            }
        }
    }
    out
}

/// The table's rows: crate → the crates it may depend on.
fn table(architecture: &str) -> BTreeMap<String, BTreeSet<String>> {
    let names = |cell: &str| -> BTreeSet<String> {
        cell.split(',').map(|c| c.trim().trim_matches('`').to_string()).filter(|c| c.starts_with("capstan-")).collect()
    };
    architecture
        .lines()
        .filter(|l| l.starts_with("| `capstan-"))
        .filter_map(|l| {
            let cells: Vec<&str> = l.split('|').map(str::trim).collect();
            // ["", crate, owns, may depend on, must not know, ""]
            Some((cells.get(1)?.trim_matches('`').to_string(), names(cells.get(3)?)))
        })
        .collect()
}

#[test]
fn every_crate_depends_on_exactly_what_architecture_md_allows() {
    let arch = std::fs::read_to_string(root().join("ARCHITECTURE.md")).expect("ARCHITECTURE.md");
    let allowed = table(&arch);
    assert!(allowed.len() >= 13, "the layer table has a row per crate: {allowed:?}");
    let mut crates = Vec::new();
    for entry in std::fs::read_dir(root().join("crates")).expect("crates/") {
        let dir = entry.expect("entry").path();
        let Ok(manifest) = std::fs::read_to_string(dir.join("Cargo.toml")) else { continue };
        crates.push((dir.file_name().expect("name").to_string_lossy().to_string(), dependencies(&manifest)));
    }
    assert_eq!(crates.len(), allowed.len(), "one row per crate under crates/");
    let mut problems = Vec::new();
    for (name, deps) in &crates {
        let Some(may) = allowed.get(name) else {
            problems.push(format!("{name} has no row in ARCHITECTURE.md's layer table"));
            continue;
        };
        for d in deps.difference(may) {
            problems.push(format!("{name} depends on {d}, which its row does not allow"));
        }
        for d in may.difference(deps) {
            problems.push(format!("{name}'s row names {d}, which it does not depend on: update the table"));
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

#[test]
fn the_parsers_read_what_they_should() {
    let manifest = "[package]\nname = \"x\"\n[dependencies]\ncapstan-model.workspace = true\ncapstan-store = { path = \"../s\" }\nserde = \"1\"\n[dev-dependencies]\ncapstan-api.workspace = true\n";
    assert_eq!(dependencies(manifest), BTreeSet::from(["capstan-model".to_string(), "capstan-store".to_string()]));
    let t = table("| `capstan-a` | things | `capstan-b`, `capstan-c` | api |\n| `capstan-b` | more | — | all |\n");
    assert_eq!(t["capstan-a"], BTreeSet::from(["capstan-b".to_string(), "capstan-c".to_string()]));
    assert!(t["capstan-b"].is_empty());
}

/// Adding a kind: `capstan_api::controller_of` names the controller of every kind (the compiler points at it), and
/// the control plane starts each one named.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_plane_starts_the_controller_of_every_kind_that_names_one() {
    let tp = capstan_e2e::TestPlane::start().await;
    let running = tp.plane().controllers();
    for kind in capstan_model::Kind::ALL {
        if let Some(name) = capstan_api::controller_of(*kind) {
            assert!(running.contains(&name), "{kind}'s controller {name} is not running: {running:?}");
        }
    }
    assert_eq!(capstan_api::controller_of(capstan_model::Kind::Secret), None);
    tp.stop().await;
}
