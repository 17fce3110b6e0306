//! Building a path of a Source into objects: read every manifest under it, substitute variables, parse and validate,
//! with every problem named by file, line and field.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use capstan_model::{check_duplicates, parse_manifests, Diagnostic, Diagnostics, Manifest, BASE_DIR_ANNOTATION};

/// Manifest files larger than this are refused: no hand-written manifest is this big, and a YAML bomb often is.
pub const MAX_MANIFEST_BYTES: u64 = 4 * 1024 * 1024;

/// The annotation that turns substitution off for one object (as Flux's `kustomize.toolkit.fluxcd.io/substitute`).
pub const SUBSTITUTE_ANNOTATION: &str = "capstan.dev/substitute";

/// How to build.
#[derive(Debug, Clone, Default)]
pub struct BuildOptions {
    /// Variables for `${VAR}`; substitution runs only when this is not empty.
    pub substitute: BTreeMap<String, String>,
    /// Put every object in this namespace.
    pub target_namespace: Option<String>,
    /// Record each manifest's directory as the object's base directory (for relative commands and paths), under this
    /// root in place of the directory being built (a Sync gives a stable link to the revision it applied).
    pub base_dir: Option<PathBuf>,
}

fn diag(file: &str, message: String, hint: &str) -> Diagnostic {
    Diagnostic { file: file.to_string(), location: None, object: None, field: None, message, hint: Some(hint.into()) }
}

/// Lists manifest files under `dir`, sorted, never following symlinks; hidden entries are skipped.
fn collect(root: &Path, dir: &Path, out: &mut Vec<PathBuf>, diags: &mut Vec<Diagnostic>) {
    let rel = |p: &Path| p.strip_prefix(root).unwrap_or(p).display().to_string();
    let mut entries: Vec<PathBuf> = match std::fs::read_dir(dir) {
        Ok(rd) => rd.flatten().map(|e| e.path()).collect(),
        Err(e) => {
            diags.push(diag(&rel(dir), format!("cannot read the directory: {e}"), "check the path and permissions"));
            return;
        }
    };
    entries.sort();
    for p in entries {
        let name = p.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        if name.starts_with('.') {
            continue;
        }
        let Ok(meta) = std::fs::symlink_metadata(&p) else { continue };
        if meta.is_dir() {
            collect(root, &p, out, diags);
        } else if meta.is_file() && (name.ends_with(".yaml") || name.ends_with(".yml") || name.ends_with(".json")) {
            if meta.len() > MAX_MANIFEST_BYTES {
                diags.push(diag(
                    &rel(&p),
                    format!(
                        "the file is {} KiB; manifests are limited to {} KiB",
                        meta.len() >> 10,
                        MAX_MANIFEST_BYTES >> 10
                    ),
                    "split it, or move data that is not a manifest out of the Sync's path",
                ));
                continue;
            }
            out.push(p);
        }
    }
}

/// Builds every manifest under `root/path`. File names in diagnostics are relative to `root`.
pub fn build(root: &Path, path: &str, opts: &BuildOptions) -> Result<Vec<Manifest>, Diagnostics> {
    let start = root.join(path.trim_start_matches("./"));
    let shown_path = if path.is_empty() { "./" } else { path };
    match std::fs::symlink_metadata(&start) {
        Ok(m) if m.is_dir() => {}
        Ok(m) if m.is_file() => {}
        Ok(_) => {
            return Err(Diagnostics(vec![diag(
                shown_path,
                "is not a directory or a file".into(),
                "point at a directory",
            )]))
        }
        Err(_) => {
            return Err(Diagnostics(vec![diag(
                shown_path,
                "does not exist in this revision".into(),
                "check spec.path against the repository's layout",
            )]))
        }
    }
    let mut files = Vec::new();
    let mut diags = Vec::new();
    if start.is_file() {
        files.push(start.clone());
    } else {
        collect(root, &start, &mut files, &mut diags);
    }
    if files.is_empty() && diags.is_empty() {
        diags.push(diag(
            shown_path,
            "holds no .yaml, .yml or .json files".into(),
            "an empty path would delete everything this Sync applied; add manifests or fix spec.path",
        ));
    }
    let mut all = Vec::new();
    for f in files {
        let shown = f.strip_prefix(root).unwrap_or(&f).display().to_string();
        let text = match std::fs::read(&f) {
            Ok(b) => match String::from_utf8(b) {
                Ok(t) => t,
                Err(_) => {
                    diags.push(diag(&shown, "is not UTF-8 text".into(), "save it as UTF-8"));
                    continue;
                }
            },
            Err(e) => {
                diags.push(diag(&shown, format!("cannot read: {e}"), "check permissions"));
                continue;
            }
        };
        let text = if opts.substitute.is_empty() || text.contains(&format!("{SUBSTITUTE_ANNOTATION}: disabled")) {
            text
        } else {
            match crate::substitute::substitute(&text, &opts.substitute) {
                Ok(t) => t,
                Err(e) => {
                    diags.push(Diagnostic {
                        file: shown.clone(),
                        location: Some(e.location),
                        object: None,
                        field: None,
                        message: e.message,
                        hint: Some(e.hint),
                    });
                    continue;
                }
            }
        };
        match parse_manifests(&shown, &text) {
            Ok(ms) => {
                let rel_dir = f.parent().and_then(|d| d.strip_prefix(root).ok()).unwrap_or(Path::new(""));
                for mut m in ms {
                    if let (Some(ns), false) = (&opts.target_namespace, m.resource.kind().namespaced()) {
                        // A targetNamespace keeps a repository in one namespace (what a token bound to one
                        // namespace may apply); a cluster-scoped object would reach past it.
                        let e = capstan_model::FieldError::new(
                            "kind",
                            format!(
                                "{} is cluster-scoped: a Sync with spec.targetNamespace ({ns}) applies into one namespace only",
                                m.resource.kind()
                            ),
                        )
                        .hint("apply it from a Sync without targetNamespace, or name an Issuer in the namespace instead");
                        diags.push(m.diagnose(e));
                        continue;
                    }
                    let meta = m.resource.meta_mut();
                    if let Some(ns) = &opts.target_namespace {
                        meta.namespace = Some(ns.clone());
                    }
                    if let Some(base) = &opts.base_dir {
                        let dir = base.join(rel_dir).display().to_string();
                        meta.annotations.insert(BASE_DIR_ANNOTATION.to_string(), dir);
                    }
                    all.push(m);
                }
            }
            Err(d) => diags.extend(d.0),
        }
    }
    if let Err(d) = check_duplicates(&all) {
        diags.extend(d.0);
    }
    if diags.is_empty() {
        Ok(all)
    } else {
        Err(Diagnostics(diags))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const APP: &str = "apiVersion: capstan.dev/v1alpha1\nkind: App\nmetadata:\n  name: ${NAME:=web}\nspec:\n  replicas: ${REPLICAS}\n  run:\n    command: [sleep, '60']\n";

    #[test]
    fn builds_with_substitution_and_target_namespace() {
        let d = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(d.path().join("deploy/apps")).unwrap();
        std::fs::write(d.path().join("deploy/apps/web.yaml"), APP).unwrap();
        std::fs::write(d.path().join("deploy/.hidden.yaml"), "not: parsed").unwrap();
        std::fs::write(d.path().join("deploy/notes.txt"), "ignored").unwrap();
        let mut opts = BuildOptions {
            target_namespace: Some("team".into()),
            base_dir: Some("/link".into()),
            ..Default::default()
        };
        opts.substitute.insert("REPLICAS".into(), "3".into());
        let ms = build(d.path(), "./deploy", &opts).unwrap();
        assert_eq!(ms.len(), 1);
        let meta = ms[0].resource.meta();
        assert_eq!(meta.name, "web");
        assert_eq!(meta.namespace(), "team");
        assert_eq!(meta.annotations[BASE_DIR_ANNOTATION], "/link/deploy/apps");
        assert_eq!(ms[0].resource.spec_value()["replicas"], 3);
        assert_eq!(ms[0].file, "deploy/apps/web.yaml");
    }

    #[test]
    fn a_target_namespace_refuses_cluster_scoped_objects() {
        let d = tempfile::tempdir().unwrap();
        let text = "apiVersion: cert-manager.io/v1\nkind: Issuer\nmetadata: {name: own}\nspec: {selfSigned: {}}\n---\napiVersion: cert-manager.io/v1\nkind: ClusterIssuer\nmetadata: {name: le}\nspec: {selfSigned: {}}\n";
        std::fs::write(d.path().join("all.yaml"), text).unwrap();
        let opts = BuildOptions { target_namespace: Some("team".into()), ..Default::default() };
        let e = build(d.path(), ".", &opts).expect_err("refused").to_string();
        assert!(e.contains("all.yaml") && e.contains("ClusterIssuer is cluster-scoped") && e.contains("team"), "{e}");
        // Without a targetNamespace it is built as written.
        let ms = build(d.path(), ".", &BuildOptions::default()).unwrap();
        assert_eq!(ms.iter().map(|m| m.resource.namespace().to_string()).collect::<Vec<_>>(), ["default", ""]);
    }

    #[test]
    fn every_problem_names_its_file_and_line() {
        let d = tempfile::tempdir().unwrap();
        std::fs::write(d.path().join("a.yaml"), APP).unwrap();
        std::fs::write(
            d.path().join("b.yaml"),
            "apiVersion: capstan.dev/v1alpha1\nkind: App\nmetadata:\n  name: b\nspec:\n  replicass: 2\n  run:\n    command: [x]\n",
        )
        .unwrap();
        let opts = BuildOptions { substitute: [("OTHER".to_string(), "1".to_string())].into(), ..Default::default() };
        let err = build(d.path(), "", &opts).unwrap_err().to_string();
        assert!(err.contains("a.yaml:6:"), "{err}");
        assert!(err.contains("REPLICAS"), "{err}");
        assert!(err.contains("b.yaml:6:"), "{err}");
        assert!(err.contains("did you mean `replicas`"), "{err}");
    }

    #[test]
    fn a_yaml_bomb_is_refused_with_its_file() {
        let d = tempfile::tempdir().unwrap();
        let mut bomb = String::from("a: &a [x, x, x, x, x, x, x, x, x, x]\n");
        for i in 0..12 {
            let prev = if i == 0 { "a".to_string() } else { format!("l{}", i - 1) };
            bomb.push_str(&format!("l{i}: &l{i} [*{prev}, *{prev}, *{prev}, *{prev}, *{prev}, *{prev}, *{prev}, *{prev}, *{prev}, *{prev}]\n"));
        }
        std::fs::write(d.path().join("bomb.yaml"), bomb).unwrap();
        let err = build(d.path(), "", &BuildOptions::default()).unwrap_err().to_string();
        assert!(err.contains("bomb.yaml:"), "{err}");
    }

    #[test]
    fn missing_empty_and_oversized_paths_are_errors() {
        let d = tempfile::tempdir().unwrap();
        let opts = BuildOptions::default();
        assert!(build(d.path(), "nope", &opts).unwrap_err().to_string().contains("does not exist"));
        assert!(build(d.path(), "", &opts).unwrap_err().to_string().contains("no .yaml"));
        std::fs::write(d.path().join("big.yaml"), vec![b'#'; (MAX_MANIFEST_BYTES + 1) as usize]).unwrap();
        assert!(build(d.path(), "", &opts).unwrap_err().to_string().contains("limited to"));
    }
}
