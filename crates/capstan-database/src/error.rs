//! Why a Database could not be prepared, dumped or restored: the refusals of `postgres` and `backup`.

use std::path::PathBuf;

use crate::postgres::PACKAGE;

/// What went wrong with a Database's binaries, user, files, tools or dumps.
#[derive(Debug, thiserror::Error)]
pub enum DatabaseError {
    /// The requested major version has no complete set of binaries.
    #[error(
        "PostgreSQL {version} is not installed under /usr/lib/postgresql/{version}/bin; install Debian's `postgresql-{version}` package"
    )]
    VersionNotInstalled { version: u32 },
    /// No version at all: neither under /usr/lib/postgresql nor on PATH.
    #[error(
        "initdb, postgres and pg_isready were not found on PATH or under /usr/lib/postgresql/*/bin; install Debian's `{package}` package (apt install {package})",
        package = PACKAGE
    )]
    NotInstalled,
    /// The user database could not be asked about the server's user.
    #[error("looking up user `{name}`: {source}")]
    UserLookup { name: String, source: nix::Error },
    /// Capstan runs as root and the server's user does not exist.
    #[error(
        "PostgreSQL refuses to run as root and user `{name}` does not exist; install Debian's `{package}` package (it creates `postgres`) or set spec.runAs",
        package = PACKAGE
    )]
    NoSuchUser { name: String },
    #[error("chown {}: {source}", path.display())]
    Chown { path: PathBuf, source: nix::Error },
    #[error("chmod {}: {source}", path.display())]
    Chmod { path: PathBuf, source: std::io::Error },
    /// The file handing initdb the password could not be created.
    #[error("{}: {source}", path.display())]
    PasswordFile { path: PathBuf, source: std::io::Error },
    /// The password could not be written into that file.
    #[error("{0}")]
    PasswordWrite(std::io::Error),
    /// A tool (`initdb`, `postgres --single`, `pg_dump`, `pg_restore`) could not be run at all.
    #[error("running {program}: {source}")]
    Run { program: &'static str, source: std::io::Error },
    /// Waiting for `postgres --single` to finish failed.
    #[error("{0}")]
    Wait(std::io::Error),
    /// A tool ran and failed; the last lines of what it wrote on stderr.
    #[error("{program} failed: {stderr}")]
    Failed { program: &'static str, stderr: String },
    /// `CREATE DATABASE` in single-user mode failed; the last lines of stderr.
    #[error("creating database {db} failed: {stderr}")]
    CreateDatabase { db: String, stderr: String },
    /// The store could not be read.
    #[error(transparent)]
    Store(capstan_store::StoreError),
    #[error("Database {name} not found")]
    NotFound { name: String },
    #[error("Database {name} has not been set up yet")]
    NotSetUp { name: String },
    #[error("reading Database {name}'s credentials: {source}")]
    ReadCredentials { name: String, source: capstan_store::StoreError },
    #[error("Database {name} has no credentials yet")]
    NoCredentials { name: String },
    #[error("no url in the credentials")]
    NoUrl,
    #[error("reading Database {name}'s server: {source}")]
    ReadServer { name: String, source: capstan_store::StoreError },
    /// The server App has not reported its backups volume.
    #[error("Database {name}'s server has not started yet (no backup volume)")]
    ServerNotStarted { name: String },
    /// A finished dump could not be put in place under its name.
    #[error("{}: {source}", path.display())]
    SaveDump { path: PathBuf, source: std::io::Error },
    /// The dump asked for is not among the dumps of the backups volume.
    #[error("no dump {} in {}", file.display(), dir.display())]
    NoSuchDump { file: PathBuf, dir: PathBuf },
    /// There is no dump to restore.
    #[error("no dump in {} yet; take one with `capstan db backup`", dir.display())]
    NoDumps { dir: PathBuf },
}
