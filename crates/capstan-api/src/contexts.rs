//! The client's configuration, as kubectl's: named contexts (server URL, CA file, token), one of them current, in
//! `~/.config/capstan/config` (or `$CAPSTAN_CONFIG`), written private to its user.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::client::{read_token_file, Client, ClientError};

/// One way to reach one Capstan.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct Context {
    pub name: String,
    pub server: String,
    /// The CA file the server's certificate is verified against; the system's CAs when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub certificate_authority: Option<PathBuf>,
    /// The token itself (the config file is private to its user)…
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token: Option<String>,
    /// …or the file holding it (a local Capstan's `<data>/token`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token_file: Option<PathBuf>,
}

/// The configuration file.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct Config {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub current_context: Option<String>,
    #[serde(default)]
    pub contexts: Vec<Context>,
}

/// Why the configuration could not be used.
#[derive(Debug, thiserror::Error)]
pub enum ContextError {
    #[error("client configuration {path}: {reason}\n  hint: {hint}")]
    File { path: PathBuf, reason: String, hint: String },
    #[error("no context named {name} in {path}; known: {known}\n  hint: `capstan config get-contexts` lists them, `capstan login SERVER --token-file F` adds one")]
    NoSuchContext { name: String, path: PathBuf, known: String },
    #[error(transparent)]
    Client(#[from] ClientError),
}

/// Where the configuration lives: `$CAPSTAN_CONFIG`, else `$XDG_CONFIG_HOME/capstan/config`, else
/// `~/.config/capstan/config`.
pub fn config_path() -> PathBuf {
    if let Some(p) = std::env::var_os("CAPSTAN_CONFIG").filter(|p| !p.is_empty()) {
        return PathBuf::from(p);
    }
    if let Some(x) = std::env::var_os("XDG_CONFIG_HOME").filter(|p| !p.is_empty()) {
        return PathBuf::from(x).join("capstan/config");
    }
    let home = std::env::var_os("HOME").map(PathBuf::from).unwrap_or_else(|| PathBuf::from("."));
    home.join(".config/capstan/config")
}

fn file_err(path: &Path, reason: impl ToString, hint: &str) -> ContextError {
    ContextError::File { path: path.to_path_buf(), reason: reason.to_string(), hint: hint.into() }
}

impl Config {
    /// Reads the configuration; a file that does not exist is an empty one. A file others can read is refused
    /// (it may hold tokens).
    pub fn load(path: &Path) -> Result<Config, ContextError> {
        use std::os::unix::fs::PermissionsExt;
        let text = match std::fs::read_to_string(path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Config::default()),
            Err(e) => return Err(file_err(path, e, "check the file's permissions")),
        };
        let mode = std::fs::metadata(path).map(|m| m.permissions().mode() & 0o777).unwrap_or(0);
        if mode & 0o077 != 0 {
            return Err(file_err(
                path,
                format!("others can read it (mode {mode:o}) and it may hold tokens"),
                &format!("chmod 600 {}", path.display()),
            ));
        }
        let docs = capstan_model::yaml::parse_documents(&text)
            .map_err(|e| file_err(path, e, "it is YAML: current-context and a list of contexts"))?;
        let Some(doc) = docs.into_iter().next() else { return Ok(Config::default()) };
        let mut value = doc.value;
        if let Some(m) = value.as_object_mut() {
            m.remove("apiVersion");
            m.remove("kind");
        }
        let de = serde_path_to_error::deserialize(value);
        de.map_err(|e| {
            let at = e.path().to_string();
            let line = doc.start.line;
            file_err(
                path,
                format!("{at} (document at line {line}): {}", e.inner()),
                "fields: name, server, certificate-authority, token or token-file",
            )
        })
    }

    /// Writes the configuration whole (a temporary file, synced, renamed over), private to its user.
    pub fn save(&self, path: &Path) -> Result<(), ContextError> {
        use std::io::Write;
        use std::os::unix::fs::OpenOptionsExt;
        let err = |e: std::io::Error| file_err(path, e, "check the directory's permissions");
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(err)?;
        }
        let mut value = serde_json::json!({ "apiVersion": "capstan.dev/v1alpha1", "kind": "Config" });
        if let (Some(m), Ok(serde_json::Value::Object(rest))) = (value.as_object_mut(), serde_json::to_value(self)) {
            m.extend(rest);
        }
        let text = capstan_model::yaml::to_yaml_string(&value);
        let tmp = path.with_extension(format!("tmp-{}", std::process::id()));
        let mut f =
            std::fs::OpenOptions::new().write(true).create(true).truncate(true).mode(0o600).open(&tmp).map_err(err)?;
        f.write_all(text.as_bytes()).map_err(err)?;
        f.sync_all().map_err(err)?;
        std::fs::rename(&tmp, path).map_err(err)
    }

    /// Adds a context, or replaces the one of the same name.
    pub fn upsert(&mut self, context: Context) {
        match self.contexts.iter_mut().find(|c| c.name == context.name) {
            Some(c) => *c = context,
            None => self.contexts.push(context),
        }
    }

    /// A context by name.
    pub fn get(&self, name: &str, path: &Path) -> Result<&Context, ContextError> {
        self.contexts.iter().find(|c| c.name == name).ok_or_else(|| ContextError::NoSuchContext {
            name: name.into(),
            path: path.to_path_buf(),
            known: match self.contexts.is_empty() {
                true => "none".into(),
                false => self.contexts.iter().map(|c| c.name.as_str()).collect::<Vec<_>>().join(", "),
            },
        })
    }

    /// The current context, if one is set.
    pub fn current(&self, path: &Path) -> Result<Option<&Context>, ContextError> {
        self.current_context.as_deref().map(|n| self.get(n, path)).transpose()
    }
}

impl Context {
    /// A client for this context; `token` (CAPSTAN_TOKEN) and `ca` (CAPSTAN_CA_FILE) override the context's.
    pub fn client(&self, token: Option<String>, ca: Option<&Path>) -> Result<Client, ContextError> {
        let token = match (token, &self.token, &self.token_file) {
            (Some(t), _, _) => t,
            (None, Some(t), _) => t.clone(),
            (None, None, Some(f)) => read_token_file(f)?,
            (None, None, None) => {
                return Err(
                    ClientError::NoToken(format!("context {} has neither token nor token-file", self.name)).into()
                )
            }
        };
        Ok(Client::with_ca(&self.server, token, ca.or(self.certificate_authority.as_deref()))?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn contexts_round_trip_privately_and_a_readable_file_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub/config");
        let mut cfg = Config::load(&path).unwrap();
        assert_eq!(cfg, Config::default(), "no file: empty");
        cfg.upsert(Context {
            name: "prod".into(),
            server: "https://capstan.example.com:7470".into(),
            certificate_authority: Some("/etc/capstan/ca.crt".into()),
            token: Some("cst_abc".into()),
            token_file: None,
        });
        cfg.upsert(Context {
            name: "local".into(),
            server: "https://127.0.0.1:7470".into(),
            certificate_authority: None,
            token: None,
            token_file: Some("/data/token".into()),
        });
        cfg.current_context = Some("local".into());
        cfg.save(&path).unwrap();
        assert_eq!(std::fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600);
        let back = Config::load(&path).unwrap();
        assert_eq!(back, cfg);
        assert_eq!(back.current(&path).unwrap().map(|c| c.name.as_str()), Some("local"));
        let e = back.get("staging", &path).unwrap_err().to_string();
        assert!(e.contains("no context named staging") && e.contains("prod, local"), "{e}");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        assert!(Config::load(&path).unwrap_err().to_string().contains("chmod 600"));
    }

    #[test]
    fn a_bad_field_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("config");
        std::fs::write(&path, "contexts:\n- name: x\n  server: https://h\n  tokn: t\n").unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        let e = Config::load(&path).unwrap_err().to_string();
        assert!(e.contains("contexts[0]") && e.contains("tokn"), "{e}");
    }
}
