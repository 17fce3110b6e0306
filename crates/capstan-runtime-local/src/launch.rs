//! Launching a replica: its environment (ports, database URL, volumes, marker), working directory, limits, user
//! and FIFOs, then the process.

use super::*;

/// Why a replica's process could not be started.
#[derive(Debug, thiserror::Error)]
pub(crate) enum LaunchError {
    #[error("working directory {} does not exist", dir.display())]
    NoWorkingDir { dir: PathBuf },
    #[error("run.command is empty; the embedded runtime cannot run `run.image` alone")]
    EmptyCommand,
    #[error(transparent)]
    Program(#[from] process::ProgramError),
    /// A fixed port (`spec.ports[].port`) is taken.
    #[error("port {port} (spec.ports `{name}`) is already in use on 127.0.0.1")]
    PortInUse { port: u16, name: String },
    /// No socket could be bound to find a free port.
    #[error("allocating a port: {0}")]
    AllocatePort(std::io::Error),
    /// The socket bound to find a free port has no address.
    #[error("{0}")]
    PortAddress(std::io::Error),
    #[error("could not find a free port on 127.0.0.1")]
    NoFreePort,
    /// The replica's volumes could not be prepared; `volumes::prepare` says why.
    #[error(transparent)]
    Volumes(volumes::VolumeError),
    /// The FIFOs' directory or a FIFO could not be created.
    #[error("creating {}: {source}", path.display())]
    Create { path: PathBuf, source: std::io::Error },
    /// A FIFO could not be opened (or its descriptor duplicated) for the replica.
    #[error("{}: {source}", path.display())]
    Fifo { path: PathBuf, source: std::io::Error },
    #[error("setting resource limits: {0}")]
    Limits(std::io::Error),
    #[error("preparing the process: {0}")]
    Configure(std::io::Error),
    #[error("looking up user `{user}`: {source}")]
    UserLookup { user: String, source: nix::Error },
    #[error("user `{user}` (spec.run.user) does not exist on this machine")]
    NoSuchUser { user: String },
    /// Running as another user needs root.
    #[error("running as `{user}` (spec.run.user) needs Capstan to run as root; it runs as uid {uid}")]
    NotRoot { user: String, uid: nix::unistd::Uid },
    #[error("starting {}: {source}", exe.display())]
    Spawn { exe: PathBuf, source: std::io::Error },
}

impl LocalRuntime {
    /// The variable and URL an App's `databaseRef` gives its replicas. Credentials not written yet (the Database
    /// is still starting) are a wait; a store that cannot be read is a failure, never taken for "not there".
    pub(crate) fn database_env(&self, app: &App) -> Result<Option<(String, String)>, StartError> {
        let Some(r) = &app.spec.database_ref else { return Ok(None) };
        let name = capstan_model::database::credentials_secret(&r.name);
        let key = ObjectKey::new("Secret", app.metadata.namespace(), &name);
        let stored = self
            .inner
            .store
            .get(&key)
            .map_err(|e| StartError::Failed(format!("reading Secret {name} for spec.databaseRef: {e}")))?;
        let url = match stored {
            None => None,
            Some(v) => serde_json::from_value::<capstan_model::Secret>(v)
                .map_err(|e| StartError::Failed(format!("Secret {name} does not decode: {e}")))?
                .spec
                .value("url"),
        };
        match url {
            Some(b) => Ok(Some((r.env.clone(), String::from_utf8_lossy(&b).into_owned()))),
            None => Err(StartError::Waiting(format!(
                "waiting for Database {}'s credentials (spec.databaseRef); it may still be starting",
                r.name
            ))),
        }
    }

    pub(crate) fn memory_limited(&self, key: &ObjectKey, ordinal: u32) -> bool {
        matches!(self.inner.limits, LimitSupport::CgroupV2 { .. })
            && lock(&self.inner.replicas).contains_key(&(key.clone(), ordinal))
    }

    pub(crate) fn launch(
        &self,
        app: &App,
        ordinal: u32,
        revision: &str,
        prev: Option<&Record>,
        database: Option<(String, String)>,
    ) -> Result<(Record, tokio::process::Child, Vec<std::fs::File>), LaunchError> {
        let spec = &app.spec;
        let key = ObjectKey::new("App", app.metadata.namespace(), &app.metadata.name);
        let cwd = working_dir(app);
        if !cwd.is_dir() {
            return Err(LaunchError::NoWorkingDir { dir: cwd });
        }
        let Some((program, first_args)) = spec.run.command.split_first() else {
            return Err(LaunchError::EmptyCommand);
        };
        let path_env = search_path(app);
        let exe = process::resolve_program(program, &cwd, &path_env)?;

        // Ports: fixed ones must be free; allocated ones keep the replica's previous port when still free.
        let mut ports = BTreeMap::new();
        let taken = self.ports_in_use(&key, ordinal);
        for p in &spec.ports {
            let port = match p.port.filter(|p| *p != 0) {
                Some(fixed) => {
                    if taken.contains(&fixed) || TcpListener::bind(("127.0.0.1", fixed)).is_err() {
                        return Err(LaunchError::PortInUse { port: fixed, name: p.name.clone() });
                    }
                    fixed
                }
                None => {
                    let previous = prev
                        .and_then(|r| r.ports.get(&p.name).copied())
                        .filter(|port| !taken.contains(port) && TcpListener::bind(("127.0.0.1", *port)).is_ok());
                    match previous {
                        Some(port) => port,
                        None => allocate_port(&taken, &ports)?,
                    }
                }
            };
            ports.insert(p.name.clone(), port);
        }

        let mut env: Vec<(String, String)> =
            INHERITED_ENV.iter().filter_map(|k| std::env::var(k).ok().map(|v| (k.to_string(), v))).collect();
        env.retain(|(k, _)| !spec.run.env.contains_key(k));
        env.extend(spec.run.env.iter().map(|(k, v)| (k.clone(), v.clone())));
        if let Some(first) = spec.ports.first().and_then(|p| ports.get(&p.name)) {
            env.push(("PORT".into(), first.to_string()));
        }
        for (name, port) in &ports {
            env.push((port_env_name(name), port.to_string()));
        }
        env.push(("CAPSTAN_APP".into(), app.metadata.name.clone()));
        env.push(("CAPSTAN_NAMESPACE".into(), key.namespace.clone()));
        env.push(("CAPSTAN_REPLICA".into(), format!("{}-{ordinal}", app.metadata.name)));
        env.push(("CAPSTAN_ORDINAL".into(), ordinal.to_string()));
        let run = Utc::now().timestamp_nanos_opt().unwrap_or_default();
        let marker = escape::marker(&self.inner.cfg.data_dir, &key.namespace, &app.metadata.name, ordinal, run);
        env.push((escape::MARKER_ENV.into(), marker));
        let volume_env = volumes::prepare(&self.inner.store, &self.inner.cfg.data_dir, app, ordinal);
        env.extend(volume_env.map_err(LaunchError::Volumes)?);
        env.extend(database);

        let logs = spec.logs.clone().unwrap_or_default();
        let rec = Record {
            ports,
            restarts: prev.map_or(0, |p| p.restarts),
            crash_streak: prev.map_or(0, |p| p.crash_streak),
            last_exit: prev.and_then(|p| p.last_exit.clone()),
            probes: spec.probes.clone(),
            env: env.clone(),
            cwd: cwd.clone(),
            reset_after_seconds: spec.restart_backoff.clone().unwrap_or_default().reset_after_seconds,
            log_max_size: parse_bytes(&logs.max_size).unwrap_or(10 << 20),
            log_max_files: logs.max_files,
            stop_signal: spec.run.stop_signal.clone(),
            grace_seconds: Some(spec.termination_grace_period_seconds),
            ..Record::fresh(&key, ordinal, revision)
        };

        let (out, err) = self.fifo_paths(&rec);
        if let Some(dir) = out.parent() {
            std::fs::create_dir_all(dir).map_err(|source| LaunchError::Create { path: dir.to_path_buf(), source })?;
        }
        process::ensure_fifo(&out).map_err(|source| LaunchError::Create { path: out.clone(), source })?;
        process::ensure_fifo(&err).map_err(|source| LaunchError::Create { path: err.clone(), source })?;
        let child_out =
            process::open_fifo_for_child(&out).map_err(|source| LaunchError::Fifo { path: out.clone(), source })?;
        let child_err =
            process::open_fifo_for_child(&err).map_err(|source| LaunchError::Fifo { path: err.clone(), source })?;
        // Held until the log readers are open: a FIFO that no process holds open drops what is in it, so a program
        // that writes and exits at once would otherwise lose its output.
        let hold = [&child_out, &child_err]
            .iter()
            .map(|f| f.try_clone())
            .collect::<std::io::Result<Vec<_>>>()
            .map_err(|source| LaunchError::Fifo { path: out.clone(), source })?;

        let mut limits = self.inner.limits.prepare(&rec.id(), spec.resources.as_ref()).map_err(LaunchError::Limits)?;
        limits.nofile_soft = self.inner.child_nofile;
        let mut cmd = tokio::process::Command::new(&exe);
        cmd.args(first_args)
            .args(&spec.run.args)
            .env_clear()
            .envs(env)
            .current_dir(&cwd)
            .stdin(std::process::Stdio::null())
            .stdout(child_out)
            .stderr(child_err);
        process::configure(&mut cmd, &limits).map_err(LaunchError::Configure)?;
        if let Some(user) = &spec.run.user {
            let u = nix::unistd::User::from_name(user)
                .map_err(|source| LaunchError::UserLookup { user: user.clone(), source })?
                .ok_or_else(|| LaunchError::NoSuchUser { user: user.clone() })?;
            let me = nix::unistd::geteuid();
            if me.is_root() {
                cmd.uid(u.uid.as_raw()).gid(u.gid.as_raw());
                cmd.env("USER", &u.name).env("LOGNAME", &u.name).env("HOME", &u.dir);
            } else if u.uid != me {
                return Err(LaunchError::NotRoot { user: user.clone(), uid: me });
            }
        }
        let child = {
            let mut launching = lock(&self.inner.launching);
            let child = cmd.spawn().map_err(|source| LaunchError::Spawn { exe: exe.clone(), source })?;
            launching.extend(child.id());
            child
        };
        Ok((rec, child, hold))
    }

    pub(crate) fn ports_in_use(&self, except_app: &ObjectKey, except_ordinal: u32) -> HashSet<u16> {
        lock(&self.inner.replicas)
            .iter()
            .filter(|((k, o), _)| !(k == except_app && *o == except_ordinal))
            .flat_map(|(_, r)| r.rec.ports.values().copied().collect::<Vec<_>>())
            .collect()
    }
}

pub(crate) fn allocate_port(taken: &HashSet<u16>, chosen: &BTreeMap<String, u16>) -> Result<u16, LaunchError> {
    for _ in 0..64 {
        let l = TcpListener::bind(("127.0.0.1", 0)).map_err(LaunchError::AllocatePort)?;
        let port = l.local_addr().map_err(LaunchError::PortAddress)?.port();
        if !taken.contains(&port) && !chosen.values().any(|p| *p == port) {
            return Ok(port);
        }
    }
    Err(LaunchError::NoFreePort)
}

pub(crate) fn open_fifo_reader(path: &Path) -> std::io::Result<tokio::net::unix::pipe::Receiver> {
    tokio::net::unix::pipe::OpenOptions::new().read_write(true).open_receiver(path)
}
