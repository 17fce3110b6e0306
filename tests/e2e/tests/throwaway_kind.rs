//! Adding a kind, proven with a throwaway one. Widget (feature `throwaway-kind`) follows ARCHITECTURE.md's
//! checklist — its type and validation (`capstan-model/src/widget.rs`), one row in the `kinds!` table, its module in
//! the CLI (`capstan-cli/src/kinds/widget.rs`), its arms in the Kubernetes renderer, and a reconciler on the shared
//! runner (here, in the test) — and is then listed, decoded, validated, stored, reconciled and printed by `get`
//! like every other kind.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::time::Duration;

use capstan_e2e::*;
use capstan_engine::runner::{self, Action, ReconcileError, Reconciler};
use capstan_model::{Kind, ObjectKey, Resource};
use capstan_store::Store;
use serde_json::{json, Value};

const T: Duration = Duration::from_secs(30);

/// Widget's controller: reports a shape made of the spec.
struct Widgets {
    store: Store,
}

impl Reconciler for Widgets {
    fn kind(&self) -> &'static str {
        Kind::Widget.name()
    }

    fn reconcile(&self, key: &ObjectKey) -> Result<Action, ReconcileError> {
        let Some(v) = self.store.get(key)? else { return Ok(Action::AwaitChange) };
        let w = match Resource::from_value(v) {
            Ok(Resource::Widget(w)) => w,
            Ok(other) => return Err(ReconcileError::Other(format!("not a Widget: {}", other.kind()))),
            Err(e) => return Err(ReconcileError::Other(e.to_string())),
        };
        let shape = format!("{} {}", if w.spec.size > 5 { "large" } else { "small" }, w.spec.colour);
        self.store.update_status(key, json!({"observedGeneration": w.metadata.generation, "shape": shape}))?;
        Ok(Action::AwaitChange)
    }
}

fn text(o: &std::process::Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_throwaway_kind_is_listed_decoded_validated_stored_reconciled_and_printed() {
    // Listed: one row of the table made the kind, its plural, its schema and its place in the apply order.
    assert_eq!(Kind::ALL.last(), Some(&Kind::Widget));
    assert_eq!(Kind::parse("widgets"), Some(Kind::Widget));
    assert_eq!(Kind::parse("Widget"), Some(Kind::Widget));
    let schema = Kind::Widget.schema();
    assert_eq!(schema["title"], "Widget");
    assert!(schema.to_string().contains("colour"), "{schema}");
    assert!(!capstan_kubernetes_renders_widgets(), "Widget has no Kubernetes form");

    let tp = TestPlane::start().await;
    let widgets = runner::run(tp.plane().store().clone(), Arc::new(Widgets { store: tp.plane().store().clone() }), 1);
    let dir = tp.dir.path();

    // Decoded: an unknown field is named, with the field it probably meant.
    let typo = dir.join("typo.yaml");
    std::fs::write(
        &typo,
        "apiVersion: capstan.dev/v1alpha1\nkind: Widget\nmetadata: {name: w1}\nspec:\n  size: 3\n  colur: blue\n",
    )
    .unwrap();
    let out = tp.cli(&["apply", "-f", typo.to_str().unwrap()]);
    let said = text(&out);
    assert_eq!(out.status.code(), Some(2), "{said}");
    assert!(said.contains("typo.yaml") && said.contains("colur") && said.contains("colour"), "{said}");

    // Validated: a value out of range is refused, naming the file, the line and the field.
    let big = dir.join("big.yaml");
    std::fs::write(&big, "apiVersion: capstan.dev/v1alpha1\nkind: Widget\nmetadata: {name: w1}\nspec:\n  size: 11\n")
        .unwrap();
    let out = tp.cli(&["apply", "-f", big.to_str().unwrap()]);
    let said = text(&out);
    assert_eq!(out.status.code(), Some(2), "{said}");
    assert!(said.contains("big.yaml:5") && said.contains("spec.size") && said.contains("use 1 to 10"), "{said}");
    let key = ObjectKey::new("Widget", "default", "w1");
    assert_eq!(tp.plane().store().get(&key).unwrap(), None, "nothing refused is stored");

    // Stored and reconciled by its controller on the shared runner.
    let good = dir.join("good.yaml");
    std::fs::write(
        &good,
        "apiVersion: capstan.dev/v1alpha1\nkind: Widget\nmetadata: {name: w1}\nspec:\n  size: 7\n  colour: blue\n",
    )
    .unwrap();
    let out = tp.cli(&["apply", "-f", good.to_str().unwrap()]);
    assert!(out.status.success(), "{}", text(&out));
    let stored: Value = eventually("the Widget reconciled", T, || async {
        let v = tp.plane().store().get(&key).ok().flatten()?;
        (v["status"]["shape"] == "large blue").then_some(v)
    })
    .await;
    assert_eq!(stored["status"]["observedGeneration"], 1);
    // A new spec is reconciled again.
    std::fs::write(&good, "apiVersion: capstan.dev/v1alpha1\nkind: Widget\nmetadata: {name: w1}\nspec:\n  size: 2\n")
        .unwrap();
    assert!(tp.cli(&["apply", "-f", good.to_str().unwrap()]).status.success());
    eventually("the new spec reconciled", T, || async {
        let v = tp.plane().store().get(&key).ok().flatten()?;
        (v["status"]["shape"] == "small grey" && v["status"]["observedGeneration"] == 2).then_some(())
    })
    .await;

    // Printed by `get` with its own columns, and by `describe`; listed by the API under its plural.
    let out = tp.cli(&["get", "widgets"]);
    let table = text(&out);
    assert!(out.status.success(), "{table}");
    let lines: Vec<&str> = table.lines().collect();
    let header: Vec<&str> = lines[0].split_whitespace().collect();
    assert_eq!(header, ["NAME", "SIZE", "COLOUR", "SHAPE", "AGE"], "{table}");
    let row: Vec<&str> = lines[1].split_whitespace().collect();
    assert_eq!(&row[..5], ["w1", "2", "grey", "small", "grey"], "{table}");
    let out = tp.cli(&["describe", "widget", "w1"]);
    let said = text(&out);
    assert!(out.status.success(), "{said}");
    assert!(said.contains("Kind:") && said.contains("Widget") && said.contains("small grey"), "{said}");
    let out = tp.cli(&["get", "widget", "w1", "-o", "json"]);
    let v: Value = serde_json::from_slice(&out.stdout).expect("JSON");
    assert!(matches!(Resource::from_value(v).expect("decodes"), Resource::Widget(_)));
    let listed = tp.client.get("/api/v1/widgets").await.unwrap();
    assert_eq!(listed["items"].as_array().map(Vec::len), Some(1), "{listed}");

    // Deleted like any object.
    let out = tp.cli(&["delete", "widget", "w1"]);
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(tp.plane().store().get(&key).unwrap(), None);
    widgets.stop().await;
    tp.stop().await;
}

/// Whether the Kubernetes renderer says Widgets become Kubernetes objects (the operator's list derives from it).
fn capstan_kubernetes_renders_widgets() -> bool {
    capstan_kubernetes::render::renders(Kind::Widget)
}
