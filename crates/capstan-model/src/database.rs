//! The `Database` kind: a PostgreSQL server Capstan runs from the machine's binaries, with generated credentials;
//! and `databaseRef`, how an App gets its connection URL.

use std::collections::BTreeMap;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::meta::Condition;
use crate::validate::{check_dns_label, FieldError};

/// A PostgreSQL database.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct DatabaseSpec {
    /// The PostgreSQL major version to use when several are installed (under /usr/lib/postgresql/<version>/bin);
    /// the highest installed by default.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<u32>,
    /// The database to create; defaults to the object's name with '-' as '_'.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub database: Option<String>,
    /// The role Apps connect as; defaults to `app`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    /// The port on 127.0.0.1; one is allocated (and kept) when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<u16>,
    /// Server settings, passed as `-c name=value`.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub parameters: BTreeMap<String, String>,
    /// The machine's user the server runs as when Capstan runs as root (PostgreSQL refuses root); defaults to
    /// `postgres`, which Debian's package creates.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub run_as: Option<String>,
    /// `Retain` (default): deleting or pruning the Database stops the server and keeps its data and credentials.
    /// `Delete`: they go with it.
    #[serde(default)]
    pub deletion_policy: crate::app::ReclaimPolicy,
    /// Scheduled dumps (`pg_dump -Fc`) into the `backups` volume of the server's App.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backup: Option<BackupSpec>,
    /// Who runs the server on Kubernetes: `builtin` (a StatefulSet of the official image) or `cnpg` (a
    /// CloudNativePG `Cluster`, whose operator fails over and replicates). The embedded runtime always runs the
    /// machine's PostgreSQL.
    #[serde(default, skip_serializing_if = "DatabaseProvider::is_builtin")]
    pub provider: DatabaseProvider,
    /// PostgreSQL instances with `provider: cnpg` (one primary, the rest streaming replicas); 3 by default.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub instances: Option<u32>,
}

/// Who runs a Database's server on Kubernetes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum DatabaseProvider {
    #[default]
    Builtin,
    Cnpg,
}

impl DatabaseProvider {
    pub fn is_builtin(&self) -> bool {
        *self == DatabaseProvider::Builtin
    }
}

/// When to dump and how many dumps to keep.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct BackupSpec {
    /// Time between two dumps, such as `24h`. Defaults to `24h`.
    #[serde(default = "a_day")]
    pub interval: String,
    /// Dumps kept; older ones are deleted. Defaults to 7.
    #[serde(default = "seven")]
    pub keep: u32,
}

fn a_day() -> String {
    "24h".into()
}
fn seven() -> u32 {
    7
}

/// One dump of a Database.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct BackupInfo {
    pub file: String,
    pub bytes: u64,
    pub taken_at: chrono::DateTime<chrono::Utc>,
}

/// What Capstan observed of a Database.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct DatabaseStatus {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
    /// `127.0.0.1:<port>`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub endpoint: Option<String>,
    /// The Secret holding `username`, `password`, `database`, `host`, `port` and `url`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret_name: Option<String>,
    /// The App that runs the server.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub app_name: Option<String>,
    /// Where the data lives on this machine.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data_directory: Option<String>,
    /// The PostgreSQL binaries in use.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bin_directory: Option<String>,
    /// The newest dump.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_backup: Option<BackupInfo>,
}

/// A Database.
pub type Database = crate::resource::Object<DatabaseSpec, DatabaseStatus>;

/// An App's use of a Database: the connection URL in an environment variable.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct DatabaseRef {
    /// The Database, in the App's namespace.
    pub name: String,
    /// The variable that gets `postgres://user:password@127.0.0.1:port/database`. Defaults to `DATABASE_URL`.
    #[serde(default = "database_url")]
    pub env: String,
}

fn database_url() -> String {
    "DATABASE_URL".into()
}

impl DatabaseSpec {
    /// The database name, with its default.
    pub fn database_name(&self, object: &str) -> String {
        self.database.clone().unwrap_or_else(|| object.replace('-', "_"))
    }

    /// The role name, with its default.
    pub fn user_name(&self) -> String {
        self.user.clone().unwrap_or_else(|| "app".into())
    }
}

/// The name of the Secret holding a Database's credentials.
pub fn credentials_secret(database: &str) -> String {
    format!("{database}-credentials")
}

/// The name of the App that runs a Database's server.
pub fn server_app(database: &str) -> String {
    format!("{database}-postgres")
}

fn is_sql_name(s: &str) -> bool {
    let mut c = s.chars();
    matches!(c.next(), Some(ch) if ch.is_ascii_lowercase() || ch == '_')
        && c.all(|ch| ch.is_ascii_lowercase() || ch.is_ascii_digit() || ch == '_')
        && s.len() <= 63
}

/// Validates a Database spec.
pub fn validate_database(name: &str, spec: &DatabaseSpec, errors: &mut Vec<FieldError>) {
    if let Err(e) = check_dns_label(&server_app(name), 63) {
        errors.push(FieldError::new("metadata.name", e).hint("a shorter name: the server's App is `<name>-postgres`"));
    }
    let db = spec.database_name(name);
    if !is_sql_name(&db) {
        errors.push(
            FieldError::new("spec.database", format!("`{db}` is not a plain SQL name"))
                .hint("lower-case letters, digits and '_', starting with a letter"),
        );
    }
    let user = spec.user_name();
    if !is_sql_name(&user) {
        errors
            .push(FieldError::new("spec.user", format!("`{user}` is not a plain SQL name")).hint("for example `app`"));
    }
    match (spec.provider, spec.instances) {
        (DatabaseProvider::Builtin, Some(_)) => errors.push(
            FieldError::new("spec.instances", "is for `provider: cnpg`")
                .hint("the builtin server is one instance; use `provider: cnpg` for replicas and failover"),
        ),
        (DatabaseProvider::Cnpg, Some(0)) => errors
            .push(FieldError::new("spec.instances", "must be at least 1").hint("3 gives a primary and two replicas")),
        _ => {}
    }
    if spec.port == Some(0) {
        errors.push(FieldError::new("spec.port", "must not be 0").hint("leave it out to have one allocated"));
    }
    if let Some(b) = &spec.backup {
        match crate::quantity::parse_duration(&b.interval) {
            Ok(d) if d.as_secs() < 60 => errors
                .push(FieldError::new("spec.backup.interval", "must be at least 1m").hint("for example `6h` or `24h`")),
            Ok(_) => {}
            Err(e) => errors.push(FieldError::new("spec.backup.interval", e).hint("for example `24h`")),
        }
        if b.keep == 0 {
            errors.push(FieldError::new("spec.backup.keep", "must keep at least one dump"));
        }
    }
    for k in spec.parameters.keys() {
        if k.is_empty() || !k.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '.') {
            errors.push(FieldError::new(format!("spec.parameters.{k}"), "is not a PostgreSQL setting name"));
        }
    }
}
