//! Sources: credentials, fetches (Git or a directory), artifacts and their garbage, the directory watcher, and the
//! Source's status.

use super::*;

/// Why a Source's credentials Secret (`spec.secretRef`) cannot be used.
#[derive(Debug, thiserror::Error)]
pub(super) enum CredentialsError {
    /// The Secret is not there.
    #[error("Secret {}/{} named in spec.secretRef does not exist", secret.namespace, secret.name)]
    Missing { secret: ObjectKey },
    /// The Secret could not be read: not a verdict on the Secret — the reconcile fails and is retried.
    #[error("reading Secret {}/{} named in spec.secretRef: {source}", secret.namespace, secret.name)]
    Unreadable { secret: ObjectKey, source: Box<StoreError> },
    /// The Secret holds none of the keys that make credentials; `keys` are those it has.
    #[error(
        "Secret {}/{} has none of: username and password, bearerToken, identity (keys present: {})",
        secret.namespace,
        secret.name,
        keys.join(", ")
    )]
    NoCredentials { secret: ObjectKey, keys: Vec<String> },
}

pub(super) fn credentials(inner: &Inner, src: &Source) -> Result<Credentials, CredentialsError> {
    let Some(r) = &src.spec.secret_ref else { return Ok(Credentials::None) };
    let key = ObjectKey::new("Secret", src.metadata.namespace(), &r.name);
    let stored =
        inner.store.get(&key).map_err(|e| CredentialsError::Unreadable { secret: key.clone(), source: Box::new(e) })?;
    let secret: Secret = stored.and_then(typed).ok_or_else(|| CredentialsError::Missing { secret: key.clone() })?;
    let s = |k: &str| secret.spec.value(k).map(|b| String::from_utf8_lossy(&b).into_owned());
    if let Some(identity) = secret.spec.value("identity") {
        return Ok(Credentials::Ssh { identity, known_hosts: secret.spec.value("known_hosts") });
    }
    if let Some(token) = s("bearerToken") {
        return Ok(Credentials::Bearer(token));
    }
    match (s("username"), s("password")) {
        (Some(username), Some(password)) => Ok(Credentials::Basic { username, password }),
        _ => {
            let keys = secret.spec.keys().into_iter().map(str::to_string).collect();
            Err(CredentialsError::NoCredentials { secret: key, keys })
        }
    }
}

pub(super) struct Fetch {
    pub(super) revision: String,
    pub(super) written: Option<crate::artifact::Written>,
    pub(super) transferred: bool,
}

/// Why a Source could not be fetched, sorted as its status reports it.
#[derive(Debug, thiserror::Error)]
pub(super) enum FetchFailure {
    /// Its credentials Secret is missing or unusable: nothing changes until someone fixes it (stalled).
    #[error(transparent)]
    InvalidSecret(CredentialsError),
    #[error("{0}")]
    Auth(String),
    #[error("{0}")]
    RefNotFound(String),
    #[error("the fetch did not finish within spec.timeout ({0:?})")]
    Timeout(Duration),
    /// Anything else Git said (an unreachable remote, a broken local repository), credentials redacted.
    #[error("{0}")]
    Git(String),
    /// Writing the artifact (or a directory Source's copy) failed.
    #[error("{0}")]
    Artifact(String),
}

impl FetchFailure {
    /// The reason in the Source's conditions (Flux's words).
    fn reason(&self) -> &'static str {
        match self {
            FetchFailure::InvalidSecret(_) | FetchFailure::Auth(_) => "AuthenticationFailed",
            FetchFailure::RefNotFound(_) => "RefNotFound",
            FetchFailure::Timeout(_) | FetchFailure::Git(_) => "GitOperationFailed",
            FetchFailure::Artifact(_) => "ArtifactFailed",
        }
    }

    fn stalled(&self) -> bool {
        matches!(self, FetchFailure::InvalidSecret(_))
    }
}

impl From<GitError> for FetchFailure {
    fn from(e: GitError) -> Self {
        let text = redact(&e.to_string());
        match e {
            GitError::Auth(_) => FetchFailure::Auth(text),
            GitError::RefNotFound(_) => FetchFailure::RefNotFound(text),
            GitError::Artifact(_) => FetchFailure::Artifact(text),
            GitError::Remote(_) | GitError::Local(_) | GitError::Interrupted => FetchFailure::Git(text),
        }
    }
}

pub(super) async fn fetch_source(inner: &Arc<Inner>, key: &ObjectKey, src: &Source) -> Result<Fetch, FetchFailure> {
    let root = inner.source_root(key);
    let current = src.status.as_ref().and_then(|s| s.artifact.clone());
    let ignore = src.spec.ignore.clone();
    let timeout = duration_or(Some(&src.spec.timeout), Duration::from_secs(60));
    if let Some(dir) = &src.spec.dir {
        let path = capstan_model_base_dir(src).join(dir);
        ensure_watcher(inner, key, &path);
        let r = tokio::task::spawn_blocking(move || write_dir(&path, &root, ignore.as_deref()))
            .await
            .map_err(|e| FetchFailure::Artifact(e.to_string()))?
            .map_err(|e| FetchFailure::Artifact(e.to_string()))?;
        let revision = r.digest.clone();
        return Ok(Fetch { revision, written: Some(r), transferred: true });
    }
    let url = src.spec.url.clone().unwrap_or_default();
    let git_ref = src.spec.git_ref.clone().unwrap_or_default();
    let creds = credentials(inner, src).map_err(FetchFailure::InvalidSecret)?;
    let _permit = inner.fetches.acquire().await.map_err(|e| FetchFailure::Git(e.to_string()))?;
    let stop = Arc::new(AtomicBool::new(false));
    let stop2 = stop.clone();
    let job = tokio::task::spawn_blocking(move || -> Result<Fetch, GitError> {
        let repo_dir = root.join("repo.git");
        let f = fetch(&FetchRequest {
            url: &url,
            git_ref: &git_ref,
            repo_dir: &repo_dir,
            credentials: &creds,
            interrupt: &stop2,
            // The deadline below reports the timeout; the sockets' own, a little later, end the thread.
            timeout: timeout + Duration::from_secs(2),
        })?;
        let previous = current.as_ref().map(|a| PathBuf::from(&a.path)).filter(|p| p.is_dir());
        let written = match must_write(current.as_ref(), &f.revision, previous.is_some()) {
            false => None,
            true => Some(write_commit(&repo_dir, &f.commit, &root, ignore.as_deref(), previous.as_deref())?),
        };
        Ok(Fetch { revision: f.revision, written, transferred: f.transferred })
    });
    match tokio::time::timeout(timeout, job).await {
        Err(_) => {
            stop.store(true, Ordering::Relaxed);
            Err(FetchFailure::Timeout(timeout))
        }
        Ok(Err(e)) => Err(FetchFailure::Git(e.to_string())),
        Ok(Ok(Err(e))) => Err(e.into()),
        Ok(Ok(Ok(f))) => Ok(f),
    }
}

/// Whether a fetched revision must be written as an artifact: not when the current artifact is that revision and
/// its directory is still there (`current_dir_exists`).
pub(super) fn must_write(current: Option<&Artifact>, fetched: &str, current_dir_exists: bool) -> bool {
    !current.is_some_and(|a| a.revision == fetched && current_dir_exists)
}

/// Whether what was written is a new artifact for the Source's status (and its Syncs): another revision, or the
/// same revision written to another directory (the old one was gone, or a directory Source's content changed).
pub(super) fn is_new_artifact(current: Option<&Artifact>, revision: &str, written_dir: &Path) -> bool {
    !current.is_some_and(|a| a.revision == revision && Path::new(&a.path) == written_dir)
}

pub(super) fn capstan_model_base_dir(src: &Source) -> PathBuf {
    src.metadata
        .base_dir()
        .map(PathBuf::from)
        .or_else(|| std::env::current_dir().ok())
        .unwrap_or_else(|| PathBuf::from("/"))
}

pub(super) fn ensure_watcher(inner: &Arc<Inner>, key: &ObjectKey, path: &Path) {
    use notify::Watcher;
    let mut watchers = lock(&inner.watchers);
    if watchers.get(key).map(|(p, _)| p == path).unwrap_or(false) {
        return;
    }
    let tx = inner.fetch_now.clone();
    let k = key.clone();
    let handler = move |res: notify::Result<notify::Event>| {
        if let Ok(ev) = res {
            if !ev.kind.is_access() {
                let _ = tx.send(k.clone());
            }
        }
    };
    match notify::recommended_watcher(handler) {
        Ok(mut w) => match w.watch(path, notify::RecursiveMode::Recursive) {
            Ok(()) => {
                watchers.insert(key.clone(), (path.to_path_buf(), w));
            }
            Err(e) => tracing::warn!(source = %key, "cannot watch {}: {e}; polling at spec.interval", path.display()),
        },
        Err(e) => tracing::warn!(source = %key, "cannot watch {}: {e}; polling at spec.interval", path.display()),
    }
}

/// Fetches one Source; returns when to look again and whether its artifact changed. A read that fails is an error
/// (retried with backoff): the Source is not "gone", and nothing of it is removed.
pub(super) async fn reconcile_source(
    inner: &Arc<Inner>,
    key: &ObjectKey,
) -> Result<(Option<Duration>, bool), StoreError> {
    let Some(src) = inner.store.get(key)?.and_then(typed::<Source>) else { return Ok((None, false)) };
    // What this reconcile saw: its own status write that follows is not a new generation.
    lock(&inner.generations).insert(key.clone(), src.metadata.generation.unwrap_or(0));
    if src.spec.suspend {
        return Ok((None, false));
    }
    let interval = duration_or(Some(&src.spec.interval), Duration::from_secs(60));
    let g = src.metadata.generation;
    let mut status: SourceStatus = src.status.clone().unwrap_or_default();
    let started = std::time::Instant::now();
    if status.artifact.is_none() || status.observed_generation != g {
        // A first fetch, or a changed spec: say so while it runs.
        let what = src.spec.url.clone().or_else(|| src.spec.dir.clone()).unwrap_or_default();
        let msg = format!("fetching {}", redact(&what));
        set_condition(&mut status.conditions, cond(RECONCILING, ConditionStatus::True, reason::PROGRESSING, msg, g));
        write_status(inner, key, &status);
    }
    let result = match fetch_source(inner, key, &src).await {
        // A Secret that could not be read says nothing of the Source: its status stays, and the runner retries.
        Err(FetchFailure::InvalidSecret(CredentialsError::Unreadable { source, .. })) => return Err(*source),
        r => r,
    };
    status.last_fetch_millis = Some(started.elapsed().as_millis() as u64);
    status.observed_generation = g;
    let mut changed = false;
    match result {
        Ok(f) => {
            remove_condition(&mut status.conditions, FETCH_FAILED);
            remove_condition(&mut status.conditions, STALLED);
            remove_condition(&mut status.conditions, RECONCILING);
            if let Some(w) = f.written {
                if is_new_artifact(status.artifact.as_ref(), &f.revision, &w.dir) {
                    changed = true;
                    status.warnings = w.warnings.clone();
                    status.artifact = Some(Artifact {
                        revision: f.revision.clone(),
                        digest: w.digest,
                        size: w.size,
                        files: w.files,
                        path: w.dir.display().to_string(),
                        last_update_time: Utc::now(),
                    });
                    inner.event(
                        key,
                        EventType::Normal,
                        "NewArtifact",
                        &format!("stored artifact for revision '{}'", f.revision),
                    );
                    for warning in &w.warnings {
                        inner.event(key, EventType::Warning, "ArtifactWarning", warning);
                    }
                }
            }
            let msg = format!("stored artifact for revision '{}'", f.revision);
            set_condition(&mut status.conditions, cond(READY, ConditionStatus::True, reason::SUCCEEDED_SOURCE, msg, g));
            let root = inner.source_root(key);
            let mut protect = inner.protected_artifacts();
            if let Some(a) = &status.artifact {
                protect.push(PathBuf::from(&a.path));
            }
            collect_garbage(&root, KEEP_ARTIFACTS, &protect);
            tracing::debug!(source = %key, transferred = f.transferred, "fetched {}", f.revision);
        }
        Err(failure) => {
            let message = failure.to_string();
            remove_condition(&mut status.conditions, RECONCILING);
            if failure.stalled() {
                // The Source cannot work until someone fixes its Secret: stalled, not retried in a loop of events.
                set_condition(
                    &mut status.conditions,
                    cond(STALLED, ConditionStatus::True, "InvalidSecret", message.clone(), g),
                );
            }
            let why = failure.reason();
            let keep = match &status.artifact {
                Some(a) => format!("; still serving revision '{}'", a.revision),
                None => String::new(),
            };
            set_condition(&mut status.conditions, cond(FETCH_FAILED, ConditionStatus::True, why, message.clone(), g));
            set_condition(
                &mut status.conditions,
                cond(READY, ConditionStatus::False, why, format!("{message}{keep}"), g),
            );
            inner.event(key, EventType::Warning, why, &message);
        }
    }
    // A read that failed says nothing about the Source (the `?`): its repository and artifacts stay.
    if inner.store.get(key)?.is_none() {
        // Deleted while the fetch ran. The runner finalizes after a reconcile, never beside it, so the deletion's
        // cleanup comes next and removes what this fetch wrote.
        return Ok((None, false));
    }
    write_status(inner, key, &status);
    Ok((Some(interval), changed))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn artifact(revision: &str, path: &str) -> Artifact {
        Artifact {
            revision: revision.into(),
            digest: "sha256:0".into(),
            size: 0,
            files: 0,
            path: path.into(),
            last_update_time: Utc::now(),
        }
    }

    #[test]
    fn a_fetched_revision_is_written_once_and_a_new_artifact_is_said_once() {
        let a = artifact("main@sha1:c1", "/data/sources/default/repo/c1");
        // First fetch, new revision, or the directory gone: written.
        assert!(must_write(None, "main@sha1:c1", false));
        assert!(must_write(Some(&a), "main@sha1:c2", true));
        assert!(must_write(Some(&a), "main@sha1:c1", false), "its directory was removed");
        assert!(!must_write(Some(&a), "main@sha1:c1", true), "the same revision, still there");
        // What was written is new unless it is the same revision in the same place.
        assert!(is_new_artifact(None, "main@sha1:c1", Path::new("/data/sources/default/repo/c1")));
        assert!(is_new_artifact(Some(&a), "main@sha1:c2", Path::new("/data/sources/default/repo/c2")));
        assert!(is_new_artifact(Some(&a), "main@sha1:c1", Path::new("/data/sources/default/repo/c1-2")));
        assert!(!is_new_artifact(Some(&a), "main@sha1:c1", Path::new("/data/sources/default/repo/c1")));
    }

    #[test]
    fn fetch_failures_have_flux_reasons_and_only_a_bad_secret_stalls() {
        let f = |e: GitError| FetchFailure::from(e);
        assert_eq!(f(GitError::Auth("no".into())).reason(), "AuthenticationFailed");
        assert_eq!(f(GitError::RefNotFound("gone".into())).reason(), "RefNotFound");
        assert_eq!(f(GitError::Remote("refused".into())).reason(), "GitOperationFailed");
        assert_eq!(FetchFailure::Timeout(Duration::from_secs(20)).reason(), "GitOperationFailed");
        assert_eq!(FetchFailure::Artifact("full".into()).reason(), "ArtifactFailed");
        let missing = CredentialsError::Missing { secret: ObjectKey::new("Secret", "default", "git") };
        let missing = FetchFailure::InvalidSecret(missing);
        assert!(missing.stalled());
        assert_eq!(missing.reason(), "AuthenticationFailed");
        assert_eq!(missing.to_string(), "Secret default/git named in spec.secretRef does not exist");
        let keys = vec!["token".to_string(), "user".to_string()];
        let unusable = CredentialsError::NoCredentials { secret: ObjectKey::new("Secret", "default", "git"), keys };
        assert_eq!(
            unusable.to_string(),
            "Secret default/git has none of: username and password, bearerToken, identity (keys present: token, user)"
        );
        assert!(!f(GitError::Auth("no".into())).stalled());
        // Credentials in a message never reach the status.
        let text = f(GitError::Remote("https://me:s3cret@example.com/r.git refused".into())).to_string();
        assert!(!text.contains("s3cret"), "{text}");
    }
}
