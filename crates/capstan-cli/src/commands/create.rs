//! `capstan create secret tls|generic`, as kubectl has them: a Secret from files and literals, checked here (a
//! certificate and its key must belong together), then applied — or printed with `--dry-run=client -o yaml`.

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::Result;
use capstan_api::Client;
use capstan_model::Resource;
use serde_json::json;

use super::api_failure;
use crate::{CreateSecret, Failure, EXIT_OK};

/// Reads one file named on the command line; an unreadable one is named.
fn read(flag: &str, path: &Path) -> Result<String> {
    std::fs::read_to_string(path).map_err(|e| Failure::invalid(format!("error: {flag} {}: {e}", path.display())).into())
}

/// The Secret's values and type from the subcommand.
fn values(what: &CreateSecret) -> Result<(String, BTreeMap<String, String>, Option<String>)> {
    match what {
        CreateSecret::Tls { name, cert, key, .. } => {
            let (crt, k) = (read("--cert", cert)?, read("--key", key)?);
            // As kubectl does: a pair that does not belong together is refused before anything is sent.
            capstan_proxy::gateway::certified_key(crt.as_bytes(), k.as_bytes()).map_err(|e| {
                Failure::invalid(format!(
                    "error: --cert {} and --key {}: {e}\n  hint: the key must be the private key of the first certificate in --cert",
                    cert.display(),
                    key.display()
                ))
            })?;
            let values = BTreeMap::from([("tls.crt".to_string(), crt), ("tls.key".to_string(), k)]);
            Ok((name.clone(), values, Some(capstan_model::gitops::TLS_SECRET_TYPE.to_string())))
        }
        CreateSecret::Generic { name, from_literal, from_file, type_, .. } => {
            let mut values = BTreeMap::new();
            for l in from_literal {
                let Some((k, v)) = l.split_once('=') else {
                    return Err(Failure::invalid(format!(
                        "error: --from-literal {l}: give KEY=VALUE\n  hint: --from-literal password=s3cret"
                    ))
                    .into());
                };
                values.insert(k.to_string(), v.to_string());
            }
            for f in from_file {
                let (k, path) = match f.split_once('=') {
                    Some((k, p)) => (k.to_string(), Path::new(p)),
                    None => {
                        let p = Path::new(f.as_str());
                        let k = p.file_name().map(|n| n.to_string_lossy().to_string()).unwrap_or_default();
                        (k, p)
                    }
                };
                values.insert(k, read("--from-file", path)?);
            }
            if values.is_empty() {
                return Err(Failure::invalid(
                    "error: a secret needs at least one value\n  hint: --from-literal KEY=VALUE or --from-file [KEY=]PATH",
                )
                .into());
            }
            Ok((name.clone(), values, type_.clone()))
        }
    }
}

/// The v1 Secret of Capstan's `object`: `type` and `data` (base64) beside `metadata`.
fn core_secret(object: &serde_json::Value) -> serde_json::Value {
    use base64::Engine;
    let data: BTreeMap<&str, String> = object["spec"]["stringData"]
        .as_object()
        .into_iter()
        .flatten()
        .map(|(k, v)| (k.as_str(), base64::engine::general_purpose::STANDARD.encode(v.as_str().unwrap_or_default())))
        .collect();
    let mut core = json!({ "apiVersion": "v1", "kind": "Secret", "metadata": object["metadata"], "data": data });
    if let Some(t) = object["spec"]["type"].as_str() {
        core["type"] = json!(t);
    }
    core
}

pub(super) async fn create_secret(client: impl FnOnce() -> Result<Client>, what: CreateSecret) -> Result<u8> {
    let (name, values, type_) = values(&what)?;
    let (namespace, dry_run, output) = match &what {
        CreateSecret::Tls { common, .. } | CreateSecret::Generic { common, .. } => {
            (common.namespace.clone(), common.dry_run.clone(), common.output.clone())
        }
    };
    let mut spec = json!({ "stringData": values });
    if let Some(t) = type_ {
        spec["type"] = json!(t);
    }
    let mut metadata = json!({ "name": name });
    if let Some(ns) = &namespace {
        metadata["namespace"] = json!(ns);
    }
    let object = json!({
        "apiVersion": capstan_model::meta::API_VERSION, "kind": "Secret", "metadata": metadata, "spec": spec,
    });
    let resource =
        Resource::from_value(object.clone()).map_err(|e| Failure::invalid(format!("error: secret {name}: {e}")))?;
    if let Some(e) = resource.validate().into_iter().next() {
        return Err(Failure::invalid(format!("error: secret {name}: {e}")).into());
    }
    match dry_run.as_deref() {
        None if output.is_some() => {
            return Err(Failure::invalid(
                "error: -o prints the Secret instead of applying it: give --dry-run=client with it",
            )
            .into());
        }
        None => {}
        Some("client") => {
            // As kubectl prints it: Kubernetes' own v1 Secret, which Capstan takes as written too.
            let core = core_secret(&object);
            match output.as_deref() {
                Some("yaml") => print!("{}", capstan_model::yaml::to_yaml_string(&core)),
                Some("json") => println!("{}", serde_json::to_string_pretty(&core).unwrap_or_default()),
                Some(other) => {
                    return Err(Failure::invalid(format!("error: -o {other}: use yaml or json")).into());
                }
                None => println!("secret/{name} created (dry run: client)"),
            }
            return Ok(EXIT_OK);
        }
        Some(other) => return Err(Failure::invalid(format!("error: --dry-run={other}: use client")).into()),
    }
    let answer = client()?.post("/api/v1/apply", json!({ "objects": [object] })).await.map_err(api_failure)?;
    let action = answer["results"][0]["action"].as_str().unwrap_or("applied").to_string();
    println!("secret/{name} {action}");
    Ok(EXIT_OK)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn literals_need_a_key_and_files_are_named() {
        let common = crate::CreateCommon { namespace: None, dry_run: None, output: None };
        let bad = CreateSecret::Generic {
            name: "s".into(),
            from_literal: vec!["novalue".into()],
            from_file: vec![],
            type_: None,
            common: common.clone(),
        };
        assert!(values(&bad).unwrap_err().to_string().contains("--from-literal novalue: give KEY=VALUE"));
        let missing = CreateSecret::Tls {
            name: "t".into(),
            cert: "/nonexistent/tls.crt".into(),
            key: "/nonexistent/tls.key".into(),
            common,
        };
        assert!(values(&missing).unwrap_err().to_string().contains("--cert /nonexistent/tls.crt"));
    }
}
