//! Every manifest in `examples/` parses and validates as `capstan apply` would take it: an example a newcomer copies
//! must not be refused.
#![allow(clippy::unwrap_used, clippy::expect_used)] // a test: a failed step is the failure it reports

use std::path::{Path, PathBuf};

fn manifests(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).expect("examples/ is readable") {
        let path = entry.expect("an entry").path();
        if path.is_dir() {
            manifests(&path, out);
        } else if path.extension().is_some_and(|e| e == "yaml" || e == "yml") {
            out.push(path);
        }
    }
}

#[test]
fn every_example_manifest_parses_and_validates() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples");
    let mut files = Vec::new();
    manifests(&root, &mut files);
    assert!(files.len() >= 10, "the examples were found: {files:?}");
    let mut kinds = std::collections::BTreeSet::new();
    for f in &files {
        let text = std::fs::read_to_string(f).unwrap();
        let ms = capstan_model::parse_manifests(&f.display().to_string(), &text)
            .unwrap_or_else(|e| panic!("{} is refused:\n{e}", f.display()));
        assert!(!ms.is_empty(), "{} holds no object", f.display());
        kinds.extend(ms.iter().map(|m| m.resource.kind().name()));
    }
    for k in ["App", "Database", "Gateway", "HTTPRoute", "Sync", "AlertRule", "TrainingJob"] {
        assert!(kinds.contains(k), "an example shows a {k}: {kinds:?}");
    }
}
