//! The `capstan` command line: kubectl habits (get, describe, apply -f, logs, diff, -o json|yaml) over Capstan's API.

mod alerts;
mod commands;
mod events;
mod explain;
mod gitops;
mod kinds;
mod kube;
pub mod manifests;
pub mod output;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// Exit code: success, or "no differences" for diff.
pub const EXIT_OK: u8 = 0;
/// Exit code: a failure at run time (not found, unreachable), or "differences found" for diff.
pub const EXIT_FAIL: u8 = 1;
/// Exit code: invalid input (a bad manifest, bad flags).
pub const EXIT_INVALID: u8 = 2;

/// An error that carries its exit code.
#[derive(Debug)]
pub struct Failure {
    pub code: u8,
    pub message: String,
}

impl Failure {
    pub fn invalid(message: impl Into<String>) -> Self {
        Failure { code: EXIT_INVALID, message: message.into() }
    }
    pub fn fail(message: impl Into<String>) -> Self {
        Failure { code: EXIT_FAIL, message: message.into() }
    }
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for Failure {}

/// Capstan: run apps from manifests, highly available, healed, upgraded and watched.
#[derive(Parser, Debug)]
#[command(name = "capstan", version, about, propagate_version = true)]
pub struct Cli {
    /// Data directory (state, logs, token). Defaults to $XDG_DATA_HOME/capstan or ~/.local/share/capstan.
    #[arg(long, global = true, env = "CAPSTAN_DATA")]
    pub data: Option<PathBuf>,
    /// API URL of a running control plane; found through the context or the data directory when not given.
    #[arg(long, global = true, env = "CAPSTAN_SERVER")]
    pub server: Option<String>,
    /// The context of the client configuration to use (default: its current context).
    #[arg(long, global = true, env = "CAPSTAN_CONTEXT")]
    pub context: Option<String>,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Run the control plane in the foreground and apply the manifests in PATH, or follow a Git repository with
    /// --git. Ctrl-C stops every replica.
    #[command(display_order = 7)]
    Up {
        /// Manifest files or directories to apply at start.
        paths: Vec<String>,
        /// Address of the API.
        #[arg(long, default_value = capstan_api::DEFAULT_LISTEN)]
        listen: std::net::SocketAddr,
        /// Follow this Git repository: creates the Source and Sync `capstan-system/bootstrap`.
        #[arg(long)]
        git: Option<String>,
        /// The branch to follow with --git.
        #[arg(long, default_value = "main", requires = "git")]
        branch: String,
        /// The directory of the repository to apply with --git.
        #[arg(long, default_value = "./", requires = "git")]
        path: String,
        /// Seconds every listener (API, webhooks, entry points) waits for a request's headers, and for the next
        /// request on a kept-alive connection.
        #[arg(long, default_value_t = 15, value_parser = clap::value_parser!(u64).range(1..=3600))]
        header_timeout: u64,
        /// Where people reach this Capstan (as Prometheus' --web.external-url): used in notifications' externalURL
        /// and alerts' generatorURL. Default: the API's address.
        #[arg(long)]
        external_url: Option<String>,
        /// Connections the API listener holds at once; when full, the one idle longest is closed to make room.
        #[arg(long, default_value_t = 1024, value_parser = clap::value_parser!(u64).range(1..=1_000_000))]
        api_max_connections: u64,
        /// Samples one PromQL query may hold in memory at once (Prometheus' --query.max-samples).
        #[arg(long, default_value_t = 50_000_000, value_parser = clap::value_parser!(u64).range(1..))]
        query_max_samples: u64,
        /// Seconds one PromQL query may run, waiting for its turn included (Prometheus' --query.timeout).
        #[arg(long, default_value_t = 120, value_parser = clap::value_parser!(u64).range(1..=86_400))]
        query_timeout: u64,
        /// PromQL queries evaluated at once; more wait for a turn. Defaults to the number of cores (at least 2).
        #[arg(long, value_parser = clap::value_parser!(u64).range(1..=1024))]
        query_max_concurrency: Option<u64>,
        /// The file holding the key that encrypts the store, outside the data directory; made (0600) on first
        /// start. Default: `<data>.key` beside the data directory.
        #[arg(long, env = "CAPSTAN_ENCRYPTION_KEY_FILE", conflicts_with = "encryption_key_command")]
        encryption_key_file: Option<std::path::PathBuf>,
        /// A command that prints the key (base64 of 32 bytes; several lines: the first encrypts), as a KMS
        /// plugin: `--encryption-key-command 'vault kv get -field=key secret/capstan'`.
        #[arg(long, env = "CAPSTAN_ENCRYPTION_KEY_COMMAND")]
        encryption_key_command: Option<String>,
        /// A name (DNS or IP) clients use for the API, added to the certificate Capstan makes. Repeatable.
        #[arg(long = "tls-san")]
        tls_sans: Vec<String>,
        /// Serve the API with this certificate chain (PEM) instead of one from Capstan's local CA.
        #[arg(long, requires = "tls_private_key_file", conflicts_with = "plain_http")]
        tls_cert_file: Option<std::path::PathBuf>,
        /// The private key (PEM) of --tls-cert-file.
        #[arg(long, requires = "tls_cert_file")]
        tls_private_key_file: Option<std::path::PathBuf>,
        /// Serve the API over plain HTTP: refused unless --listen is a loopback address.
        #[arg(long, conflicts_with = "tls_sans")]
        plain_http: bool,
    },
    /// Print the objects a Sync would apply from PATH: variables substituted, everything validated.
    #[command(display_order = 18)]
    Build {
        /// Directories (or files) of manifests.
        #[arg(required = true)]
        paths: Vec<String>,
        /// A variable for `${NAME}`, as NAME=VALUE. Repeatable.
        #[arg(long = "var")]
        vars: Vec<String>,
        /// Put every object in this namespace.
        #[arg(long)]
        target_namespace: Option<String>,
        /// yaml or json.
        #[arg(short, long, default_value = "yaml")]
        output: String,
    },
    /// Check metrics expositions as `promtool check metrics` does.
    #[command(display_order = 17)]
    Metrics {
        #[command(subcommand)]
        action: MetricsCommand,
    },
    /// Back up or restore a Database.
    #[command(display_order = 16)]
    Db {
        #[command(subcommand)]
        action: DbCommand,
    },
    /// Work with cert-manager's Certificates: `renew` issues one again now.
    #[command(display_order = 15)]
    Certificate {
        #[command(subcommand)]
        action: CertificateCommand,
    },
    /// Work with an App's volumes.
    #[command(display_order = 15)]
    Volume {
        #[command(subcommand)]
        action: VolumeCommand,
    },
    /// Print the objects of PATH as another runtime would run them: `--target kubernetes` renders Kubernetes objects
    /// (StatefulSets, Services, HTTPRoutes or an Ingress, PodDisruptionBudgets, claims, NetworkPolicies).
    #[command(display_order = 19)]
    Render {
        #[arg(required_unless_present = "rbac")]
        paths: Vec<String>,
        /// Only `kubernetes` today.
        #[arg(long, default_value = "kubernetes")]
        target: String,
        /// Also print the embedded roles (viewer, deployer, secrets-reader, admin) as ClusterRoles, to bind per
        /// namespace with RoleBindings (docs/security.md).
        #[arg(long)]
        rbac: bool,
        /// yaml or json.
        #[arg(short, long, default_value = "yaml")]
        output: String,
        #[command(flatten)]
        entry_points: crate::kube::EntryPointArgs,
    },
    /// Print the CustomResourceDefinitions of Capstan's kinds, for running Capstan's objects on Kubernetes.
    #[command(display_order = 20)]
    Crds,
    /// Run in a cluster: reconcile Capstan's custom resources into Kubernetes objects, one leader among replicas.
    #[command(display_order = 21)]
    Operator {
        /// Print the ServiceAccount and RBAC objects the operator needs (exactly what it uses), then exit.
        #[arg(long)]
        print_rbac: bool,
        #[command(flatten)]
        settings: crate::kube::OperatorSettings,
    },
    /// Serve an ONNX model with the TensorFlow Serving REST API (what a ModelServer runs): versions are numbered
    /// directories under the base path, each with a model.onnx, polled and swapped in while serving.
    #[command(display_order = 22)]
    ServeModel {
        /// The name clients use: /v1/models/<name>.
        #[arg(long)]
        model_name: String,
        /// The directory holding the numbered version directories.
        #[arg(long)]
        model_base_path: std::path::PathBuf,
        /// The REST port (TF Serving's is 8501).
        #[arg(long, default_value_t = 8501, env = "PORT")]
        rest_api_port: u16,
        /// The address to listen on.
        #[arg(long, default_value = "127.0.0.1")]
        address: std::net::IpAddr,
        /// latest, all or specific.
        #[arg(long, default_value = "latest")]
        version_policy: String,
        /// With `latest`: how many of the highest versions to serve.
        #[arg(long, default_value_t = 1)]
        num_versions: usize,
        /// With `specific`: the versions to serve, comma-separated.
        #[arg(long, value_delimiter = ',')]
        versions: Vec<u64>,
        /// How often to look for new versions (TF Serving's file_system_poll_wait_seconds).
        #[arg(long, default_value_t = 1.0)]
        poll_seconds: f64,
    },
    /// Fetch and apply a Sync now instead of waiting for its interval.
    #[command(display_order = 11)]
    Sync {
        #[command(subcommand)]
        action: SyncCommand,
    },
    /// Create an object from the command line, as kubectl does: `capstan create secret tls NAME --cert F --key F`.
    #[command(display_order = 5)]
    Create {
        #[command(subcommand)]
        what: CreateCommand,
    },
    /// Create or update objects from manifests (all or nothing).
    #[command(display_order = 4)]
    Apply {
        /// A file, a directory, or - for stdin. Repeatable.
        #[arg(short = 'f', long = "filename", required = true)]
        files: Vec<String>,
        /// Wait until every applied object is Ready (on Kubernetes: rolled out, bound, complete…).
        #[arg(long)]
        wait: bool,
        /// How long --wait waits.
        #[arg(long, default_value = "5m")]
        timeout: String,
        /// `client`: check the manifests here and print what would be sent; `server`: the server admits them and
        /// says what it would do. Nothing is changed either way.
        #[arg(long, value_name = "client|server", num_args = 0..=1, default_missing_value = "client")]
        dry_run: Option<String>,
        /// `embedded` (this machine's control plane) or `kubernetes` (the kubeconfig's cluster, by server-side apply).
        #[arg(long, default_value = "embedded")]
        target: String,
        #[command(flatten)]
        kube: crate::kube::KubeArgs,
    },
    /// List objects of a kind, or show one.
    #[command(display_order = 1)]
    Get {
        /// What to list: apps, databases, sources, syncs, secrets, configmaps, trainingjobs, modelservers, alertrules,
        /// escalationpolicies, gateways, httproutes, tlsroutes, tcproutes, referencegrants, backendtlspolicies,
        /// issuers, clusterissuers, certificates (or the singular), or events.
        kind: String,
        /// One object's name; all of the kind when left out.
        name: Option<String>,
        /// The namespace to look in (default: `default`).
        #[arg(short, long)]
        namespace: Option<String>,
        /// Every namespace.
        #[arg(short = 'A', long)]
        all_namespaces: bool,
        /// table, wide, json or yaml.
        #[arg(short, long, default_value = "table")]
        output: String,
        /// After listing, print a row for every change (table output).
        #[arg(short, long)]
        watch: bool,
        /// Keep `metadata.managedFields` (which Sync owns an object) in json and yaml output, as kubectl's flag.
        #[arg(long)]
        show_managed_fields: bool,
    },
    /// List open incidents (with --all, resolved ones too), then every pending and firing alert and its incident.
    #[command(display_order = 12)]
    Alerts {
        #[arg(long)]
        all: bool,
        /// table, json or yaml.
        #[arg(short, long, default_value = "table")]
        output: String,
    },
    /// Acknowledge an incident: its escalation stops.
    #[command(display_order = 13)]
    Ack {
        id: String,
        /// Who acknowledges; defaults to $USER.
        #[arg(long)]
        by: Option<String>,
    },
    /// Resolve an incident by hand; everyone notified hears of it.
    #[command(display_order = 14)]
    Resolve {
        id: String,
        #[arg(long)]
        by: Option<String>,
    },
    /// Set the number of replicas of an App, as `kubectl scale` does.
    #[command(display_order = 9)]
    Scale {
        /// The App, as `app/NAME` or `NAME`.
        app: String,
        /// A negative number is taken as given, so that the server's error names it.
        #[arg(long, allow_hyphen_values = true)]
        replicas: i64,
        #[arg(short, long)]
        namespace: Option<String>,
    },
    /// Show an object in detail, with its replicas and recent events.
    #[command(display_order = 2)]
    Describe {
        kind: String,
        name: String,
        #[arg(short, long)]
        namespace: Option<String>,
    },
    /// Print the logs of an App's replicas.
    #[command(display_order = 3)]
    Logs {
        /// The App; or give -l to follow every App whose labels match.
        app: Option<String>,
        /// Every App with these labels, as `key=value[,key=value]`.
        #[arg(short = 'l', long = "selector")]
        selector: Option<String>,
        /// Only lines up to this long ago, such as 5m (with --since, a time window).
        #[arg(long)]
        until: Option<String>,
        /// Only lines matching this regular expression.
        #[arg(long)]
        grep: Option<String>,
        /// Only this replica ordinal.
        #[arg(long)]
        replica: Option<u32>,
        /// Keep printing new lines.
        #[arg(short, long)]
        follow: bool,
        /// Only lines newer than this, such as 10s, 5m or 2h.
        #[arg(long)]
        since: Option<String>,
        /// Only the last N lines.
        #[arg(long)]
        tail: Option<usize>,
        /// Prefix each line with its time.
        #[arg(long)]
        timestamps: bool,
        /// Keep the colour and cursor escape sequences replicas wrote (removed by default).
        #[arg(long)]
        ansi: bool,
        #[arg(short, long)]
        namespace: Option<String>,
    },
    /// Delete an object, or every object in manifests.
    #[command(display_order = 6)]
    Delete {
        kind: Option<String>,
        name: Option<String>,
        #[arg(short = 'f', long = "filename")]
        files: Vec<String>,
        #[arg(short, long)]
        namespace: Option<String>,
    },
    /// Compare manifests with the running state: created, changed (field by field), deleted.
    /// Exit 0: no differences, 1: differences, 2: error.
    #[command(display_order = 5)]
    Diff {
        /// Directories of manifests, built as a Sync builds them.
        paths: Vec<String>,
        /// Manifest files, as `apply -f` reads them. Repeatable.
        #[arg(short = 'f', long = "filename")]
        files: Vec<String>,
        /// Compare as this Sync would apply: its variables and namespace, and its inventory for deletions.
        #[arg(long)]
        sync: Option<String>,
        #[arg(short, long)]
        namespace: Option<String>,
    },
    /// Follow, list, undo or restart an App's rolling updates.
    #[command(display_order = 8)]
    Rollout {
        #[command(subcommand)]
        action: RolloutCommand,
    },
    /// Print the JSON Schema of a kind (all kinds without an argument), for editors.
    #[command(display_order = 23)]
    Schema { kind: Option<String> },
    /// Stop the control plane.
    #[command(display_order = 24)]
    Shutdown {
        /// Leave replicas running for the next `capstan up` to adopt (for upgrades of Capstan itself).
        #[arg(long)]
        keep_workloads: bool,
    },
    /// Print a shell completion script: `source <(capstan completion bash)`, or save it where your shell looks.
    #[command(display_order = 25)]
    Completion { shell: clap_complete::Shell },
    /// Describe a kind or one of its fields from its schema: `capstan explain app.spec.update`.
    /// Wait until objects are Ready, waiting first for the control plane to answer (so it can follow
    /// `capstan up … &`): `capstan wait app/hello db/board-db --timeout 2m`.
    #[command(display_order = 9)]
    Wait {
        /// Objects as KIND/NAME.
        #[arg(required = true)]
        objects: Vec<String>,
        /// Only `condition=Ready` (a TrainingJob: Succeeded), as `kubectl wait --for`.
        #[arg(long = "for", default_value = "condition=Ready")]
        condition: String,
        #[arg(long, default_value = "2m")]
        timeout: String,
        #[arg(short, long)]
        namespace: Option<String>,
    },
    #[command(display_order = 10)]
    Explain {
        /// KIND or KIND.field.path, such as `app`, `app.spec.probes.readiness`, `sync.spec`.
        what: String,
    },
    /// Show the audit log: who changed what, who was refused, who read Secret values.
    #[command(display_order = 27)]
    Audit {
        /// Only lines this recent, such as 1h or 30m.
        #[arg(long)]
        since: Option<String>,
        /// Only this user's lines.
        #[arg(long)]
        user: Option<String>,
        /// Only lines about this kind (name or plural).
        #[arg(long)]
        kind: Option<String>,
        /// table, or json (one line per record, as stored).
        #[arg(short, long, default_value = "table")]
        output: String,
    },
    /// Work with the encryption of Secrets at rest: `capstan secrets rotate-key`.
    #[command(display_order = 29)]
    Secrets {
        #[command(subcommand)]
        action: SecretsCommand,
    },
    /// Add a context for a Capstan API to the client configuration and make it current: the server is checked
    /// with the token (and the CA) before anything is written.
    #[command(display_order = 30)]
    Login {
        /// The API's URL, such as https://capstan.example.com:7470.
        server: String,
        /// The file holding the token (from `capstan token create`); must not be readable by others.
        #[arg(long)]
        token_file: PathBuf,
        /// The CA file to verify the server with (a local Capstan's is <data>/tls/ca.crt); the system's CAs
        /// when left out.
        #[arg(long)]
        certificate_authority: Option<PathBuf>,
        /// The context's name; the server's host and port when left out.
        #[arg(long)]
        name: Option<String>,
    },
    /// Show and switch the contexts of the client configuration (~/.config/capstan/config, or $CAPSTAN_CONFIG).
    #[command(display_order = 31)]
    Config {
        #[command(subcommand)]
        action: ConfigCommand,
    },
    /// Make, list and revoke named API tokens (admin only): each with a role, one namespace or all, and an expiry.
    #[command(display_order = 28)]
    Token {
        #[command(subcommand)]
        action: TokenCommand,
    },
    /// Print this client's version and commit, and the server's when one is running.
    #[command(display_order = 26)]
    Version {
        /// Only this client's version; do not ask the server.
        #[arg(long)]
        client: bool,
        /// table, json or yaml.
        #[arg(short, long, default_value = "table")]
        output: String,
    },
}

#[derive(Subcommand, Debug)]
pub enum ConfigCommand {
    /// List the contexts; the current one is marked with *.
    GetContexts,
    /// Make a context the current one.
    UseContext { name: String },
    /// Print the current context's name.
    CurrentContext,
}

#[derive(Subcommand, Debug)]
pub enum CreateCommand {
    /// A Secret: `tls` from a certificate and its key, `generic` from literals and files. Applied (created, or
    /// updated when it exists), or printed with `--dry-run=client -o yaml`.
    Secret {
        #[command(subcommand)]
        kind: CreateSecret,
    },
}

/// What every `create` takes.
#[derive(clap::Args, Debug, Clone)]
pub struct CreateCommon {
    /// The namespace (default: `default`).
    #[arg(short, long)]
    pub namespace: Option<String>,
    /// `client`: print or check the object here; nothing is sent.
    #[arg(long, value_name = "client", num_args = 0..=1, default_missing_value = "client")]
    pub dry_run: Option<String>,
    /// With --dry-run: print the object as yaml or json.
    #[arg(short, long)]
    pub output: Option<String>,
}

#[derive(Subcommand, Debug)]
pub enum CreateSecret {
    /// A `kubernetes.io/tls` Secret with `tls.crt` and `tls.key`, for a Gateway's HTTPS listener. The key must be
    /// the first certificate's: a pair that does not belong together is refused here.
    Tls {
        name: String,
        /// The PEM certificate chain, leaf first.
        #[arg(long)]
        cert: PathBuf,
        /// The PEM private key of the leaf certificate.
        #[arg(long)]
        key: PathBuf,
        #[command(flatten)]
        common: CreateCommon,
    },
    /// A Secret from `--from-literal KEY=VALUE` and `--from-file [KEY=]PATH` (the file's name is the key when left
    /// out), each repeatable.
    Generic {
        name: String,
        #[arg(long)]
        from_literal: Vec<String>,
        #[arg(long)]
        from_file: Vec<String>,
        /// The Secret's type, such as `Opaque` (kept for Kubernetes).
        #[arg(long = "type")]
        type_: Option<String>,
        #[command(flatten)]
        common: CreateCommon,
    },
}

#[derive(Subcommand, Debug)]
pub enum SecretsCommand {
    /// Wrap every data key with a new key-encryption key and encrypt every stored value again, while everything
    /// keeps running (admin only). With a key file, Capstan makes the new key and writes it to the file; with a
    /// key command, the command's first key becomes the one in use.
    RotateKey,
}

#[derive(Subcommand, Debug)]
pub enum TokenCommand {
    /// Make a token and print it (this is the only time it is shown): `capstan token create ci --role deployer
    /// --namespace team-a --ttl 30d > ci.token`.
    Create {
        name: String,
        /// viewer, deployer, secrets-reader or admin.
        #[arg(long)]
        role: String,
        /// The one namespace the token works in; every namespace when left out.
        #[arg(short, long)]
        namespace: Option<String>,
        /// How long the token works, such as 30d or 12h; until revoked when left out.
        #[arg(long)]
        ttl: Option<String>,
        /// token (the token alone, on stdout) or json (with its record).
        #[arg(short, long, default_value = "token")]
        output: String,
    },
    /// List tokens: name, role, namespace, state (active, expired, revoked), expiry. Never the tokens themselves.
    List {
        /// table or json.
        #[arg(short, long, default_value = "table")]
        output: String,
    },
    /// Revoke a token: it stops working at once.
    Revoke { name: String },
    /// Print who the token in use is: its name, role and namespace.
    #[command(name = "whoami")]
    WhoAmI,
}

#[derive(Subcommand, Debug)]
pub enum MetricsCommand {
    /// Parse an exposition (a file, or - for stdin) and report syntax errors and broken conventions with their
    /// line. Exit 0: clean; 1: problems; 2: unreadable.
    Lint {
        file: String,
        /// prometheus (text 0.0.4) or openmetrics; by default, OpenMetrics when the text ends with `# EOF`.
        #[arg(long)]
        format: Option<String>,
    },
    /// Run a PromQL query against Capstan's metrics (an instant query, or a range with --range).
    Query {
        query: String,
        /// Evaluate at this time (RFC 3339 or Unix seconds); default now.
        #[arg(long)]
        time: Option<String>,
        /// A range query over this long before --time (e.g. 1h), one point per --step.
        #[arg(long)]
        range: Option<String>,
        #[arg(long, default_value = "15s")]
        step: String,
        /// table or json.
        #[arg(short, long, default_value = "table")]
        output: String,
    },
}

#[derive(Subcommand, Debug)]
pub enum DbCommand {
    /// Dump the database now (pg_dump -Fc into its backups volume).
    Backup {
        name: String,
        #[arg(short, long)]
        namespace: Option<String>,
    },
    /// Restore a dump over the database: the newest, or the one --file names.
    Restore {
        name: String,
        #[arg(long)]
        file: Option<String>,
        #[arg(short, long)]
        namespace: Option<String>,
    },
}

#[derive(Subcommand, Debug)]
pub enum VolumeCommand {
    /// Make replica TO's copy of a replica volume a copy of replica FROM's: TO is drained and stopped, the
    /// volume copied while FROM serves (FROM is paused only for a last pass over what changed), then TO starts.
    Sync {
        app: String,
        #[arg(long)]
        volume: String,
        #[arg(long)]
        from: u32,
        #[arg(long)]
        to: u32,
        #[arg(short, long)]
        namespace: Option<String>,
    },
}

#[derive(Subcommand, Debug)]
pub enum CertificateCommand {
    /// Issue the Certificate again now, whatever its renewal time (cmctl's `renew`); the old one serves until the
    /// new one is written.
    Renew {
        name: String,
        #[arg(short, long)]
        namespace: Option<String>,
    },
}

#[derive(Subcommand, Debug)]
pub enum SyncCommand {
    /// Fetch the Sync's Source and apply it at once; waits for the result.
    Now {
        name: String,
        #[arg(short, long)]
        namespace: Option<String>,
        /// Give up waiting after this long.
        #[arg(long, default_value = "5m")]
        timeout: String,
        /// Only ask; do not wait for the result.
        #[arg(long)]
        no_wait: bool,
    },
}

#[derive(Subcommand, Debug)]
pub enum RolloutCommand {
    /// Follow an update until it completes (exit 0) or fails or is rolled back (exit 1).
    Status {
        app: String,
        #[arg(short, long)]
        namespace: Option<String>,
        /// Give up after this long.
        #[arg(long, default_value = "10m")]
        timeout: String,
    },
    /// List the remembered revisions.
    History {
        app: String,
        #[arg(short, long)]
        namespace: Option<String>,
    },
    /// Go back to the previous revision (or --to-revision), writing its spec into the App.
    Undo {
        app: String,
        #[arg(long)]
        to_revision: Option<String>,
        #[arg(short, long)]
        namespace: Option<String>,
    },
    /// Replace every replica, in update order, without changing the spec.
    Restart {
        app: String,
        #[arg(short, long)]
        namespace: Option<String>,
    },
}

/// The data directory: --data, CAPSTAN_DATA, or the XDG default.
pub fn data_dir(flag: Option<PathBuf>) -> PathBuf {
    if let Some(d) = flag {
        return d;
    }
    if let Some(x) = std::env::var_os("XDG_DATA_HOME") {
        return PathBuf::from(x).join("capstan");
    }
    let home = std::env::var_os("HOME").map(PathBuf::from).unwrap_or_else(|| PathBuf::from("."));
    home.join(".local/share/capstan")
}

/// Runs the CLI with the process's arguments and returns the exit code.
#[allow(unsafe_code)] // each block below says why it is sound (SAFETY)
pub fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(c) => c,
        Err(e) => {
            let code = if e.use_stderr() { EXIT_INVALID } else { EXIT_OK };
            let _ = e.print();
            return ExitCode::from(code);
        }
    };
    if !matches!(cli.command, Command::Up { .. }) {
        // Like other Unix tools, die quietly when the reader goes away (`capstan get apps | head`).
        // `up` keeps ignoring SIGPIPE: a closed terminal must not kill the control plane.
        // SAFETY: restoring the default disposition of SIGPIPE before any thread is started.
        unsafe {
            libc::signal(libc::SIGPIPE, libc::SIG_DFL);
        }
    }
    let filter = tracing_subscriber::EnvFilter::try_from_env("CAPSTAN_LOG").unwrap_or_else(|_| {
        tracing_subscriber::EnvFilter::new(if matches!(cli.command, Command::Up { .. }) { "info" } else { "warn" })
    });
    // Colours only on a terminal: a log file or CI's output gets plain text.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(false)
        .with_ansi(ansi)
        .init();
    let rt = match tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::from(EXIT_FAIL);
        }
    };
    match rt.block_on(commands::run(cli)) {
        Ok(code) => ExitCode::from(code),
        Err(e) => match e.downcast_ref::<Failure>() {
            Some(f) => {
                eprintln!("{}", f.message);
                ExitCode::from(f.code)
            }
            None => {
                eprintln!("error: {e:#}");
                ExitCode::from(EXIT_FAIL)
            }
        },
    }
}
