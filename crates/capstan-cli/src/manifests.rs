//! Reading manifests from files, directories and stdin, and naming file and line for server-side errors.

use std::path::{Path, PathBuf};

use capstan_model::BASE_DIR_ANNOTATION;
use capstan_model::{check_duplicates, parse_manifests, Diagnostic, Diagnostics, FieldError, Manifest};
use serde_json::Value;

fn collect_files(path: &Path, out: &mut Vec<PathBuf>) -> std::io::Result<()> {
    if path.is_dir() {
        let mut entries: Vec<PathBuf> = std::fs::read_dir(path)?.filter_map(|e| e.ok().map(|e| e.path())).collect();
        entries.sort();
        for e in entries {
            let name = e.file_name().map(|n| n.to_string_lossy().to_string()).unwrap_or_default();
            if name.starts_with('.') {
                continue;
            }
            if e.is_dir() {
                collect_files(&e, out)?;
            } else if name.ends_with(".yaml") || name.ends_with(".yml") || name.ends_with(".json") {
                out.push(e);
            }
        }
        Ok(())
    } else {
        out.push(path.to_path_buf());
        Ok(())
    }
}

fn io_diag(file: &str, message: String, hint: &str) -> Diagnostics {
    Diagnostics(vec![Diagnostic {
        file: file.to_string(),
        location: None,
        object: None,
        field: None,
        message,
        hint: Some(hint.to_string()),
    }])
}

/// Reads every manifest under `paths` (`-` is stdin). Every problem in every file is reported together.
pub fn load(paths: &[String]) -> Result<Vec<Manifest>, Diagnostics> {
    let cwd = std::env::current_dir().unwrap_or_else(|_| PathBuf::from("/"));
    let mut all = Vec::new();
    let mut diags = Vec::new();
    for p in paths {
        let sources: Vec<(String, String, PathBuf)> = if p == "-" {
            let mut text = String::new();
            std::io::Read::read_to_string(&mut std::io::stdin(), &mut text)
                .map_err(|e| io_diag("-", format!("cannot read standard input: {e}"), "pipe a manifest in"))?;
            vec![("-".into(), text, cwd.clone())]
        } else {
            let path = Path::new(p);
            if !path.exists() {
                diags.push(io_diag(p, "no such file or directory".into(), "check the path").0.remove(0));
                continue;
            }
            let mut files = Vec::new();
            collect_files(path, &mut files)
                .map_err(|e| io_diag(p, format!("cannot read: {e}"), "check permissions"))?;
            if files.is_empty() {
                diags.push(
                    io_diag(
                        p,
                        "no .yaml, .yml or .json files here".into(),
                        "point at a manifest file or a directory of them",
                    )
                    .0
                    .remove(0),
                );
            }
            let mut out = Vec::new();
            for f in files {
                let shown = f.display().to_string();
                match std::fs::read_to_string(&f) {
                    Ok(text) => {
                        let dir = f
                            .canonicalize()
                            .ok()
                            .and_then(|c| c.parent().map(Path::to_path_buf))
                            .unwrap_or_else(|| cwd.clone());
                        out.push((shown, text, dir));
                    }
                    Err(e) => diags.push(io_diag(&shown, format!("cannot read: {e}"), "check permissions").0.remove(0)),
                }
            }
            out
        };
        for (file, text, dir) in sources {
            match parse_manifests(&file, &text) {
                Ok(ms) => {
                    for mut m in ms {
                        m.resource
                            .meta_mut()
                            .annotations
                            .entry(BASE_DIR_ANNOTATION.to_string())
                            .or_insert_with(|| dir.display().to_string());
                        all.push(m);
                    }
                }
                Err(d) => diags.extend(d.0),
            }
        }
    }
    if let Err(d) = check_duplicates(&all) {
        diags.extend(d.0);
    }
    if !diags.is_empty() {
        return Err(Diagnostics(diags));
    }
    Ok(all)
}

/// Maps the API's admission errors (object index and field path) back to files and lines.
pub fn server_diagnostics(manifests: &[Manifest], body: &Value) -> Option<Diagnostics> {
    let errors = body["errors"].as_array()?;
    let diags = errors
        .iter()
        .map(|e| {
            let fe = FieldError {
                path: e["path"].as_str().unwrap_or("").to_string(),
                message: e["message"].as_str().unwrap_or("").to_string(),
                hint: e["hint"].as_str().map(str::to_string),
            };
            match e["index"].as_u64().and_then(|i| manifests.get(i as usize)) {
                Some(m) => m.diagnose(fe),
                None => Diagnostic {
                    file: "-".into(),
                    location: None,
                    object: None,
                    field: Some(fe.path),
                    message: fe.message,
                    hint: fe.hint,
                },
            }
        })
        .collect();
    Some(Diagnostics(diags))
}
