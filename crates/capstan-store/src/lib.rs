//! Capstan's embedded state: objects, per-object events and runtime records in one redb file, with watches.
//!
//! The store is kind-agnostic: it keeps objects as JSON and knows only the metadata rules every kind shares
//! (uid, generation bumped when `spec` changes or an App is restarted, resourceVersion bumped on every write).

pub mod seal;

use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

use capstan_model::{Event, EventType, ObjectKey};
use chrono::Utc;
use redb::{Database, Durability, ReadableTable, ReadableTableMetadata, TableDefinition, TableHandle};
use serde_json::{json, Value};
use tokio::sync::broadcast;

const OBJECTS: TableDefinition<&str, &[u8]> = TableDefinition::new("objects");
const EVENTS: TableDefinition<&str, &[u8]> = TableDefinition::new("events");
const RECORDS: TableDefinition<&str, &[u8]> = TableDefinition::new("records");
const META: TableDefinition<&str, u64> = TableDefinition::new("meta");
/// Data keys, wrapped by a key-encryption key that is not in the store (`dek/<id>`).
const KEYS: TableDefinition<&str, &[u8]> = TableDefinition::new("keys");
/// The tables whose values are sealed.
const SEALED_TABLES: [TableDefinition<&str, &[u8]>; 3] = [OBJECTS, EVENTS, RECORDS];

use seal::{Keyring, SealError, Sealer};

/// The META flag of a store whose file still holds values in the clear in free pages, until it is compacted.
const NEEDS_COMPACTION: &str = "needs_compaction";

/// The layout version this build writes; older layouts are migrated on open.
pub const SCHEMA_VERSION: u64 = 1;
/// Events kept per object.
pub const EVENTS_PER_OBJECT: usize = 50;

/// What went wrong in the store.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("the data directory is in use by another capstan process ({0}); stop it first or pass another --data")]
    Locked(String),
    #[error("the state file was written by a newer capstan (layout {found}, this build reads up to {SCHEMA_VERSION}); upgrade capstan")]
    TooNew { found: u64 },
    #[error("state database: {0}")]
    Db(String),
    #[error("stored object {key} is not valid JSON: {source}")]
    Corrupt { key: String, source: serde_json::Error },
    #[error("object is missing metadata.name")]
    NoName,
    /// The store is encrypted and no key was given.
    #[error("{path} is encrypted and no key was given\n  hint: pass the key it was encrypted with (--encryption-key-file or --encryption-key-command)")]
    NoKey { path: String },
    /// None of the keys given wrapped the store's data keys; nothing was read or written.
    #[error("{path} was encrypted with key {wrapped_by}, and the keys given are {given}; nothing was changed\n  hint: give the key file (or key command) this data directory was started with")]
    WrongKey { path: String, wrapped_by: String, given: String },
    #[error("encryption: {0}")]
    Seal(#[from] SealError),
    /// An apply named the resourceVersion it read, and the object has changed since (Kubernetes' 409 Conflict).
    #[error(
        "{key} was changed since it was read (resourceVersion {given}, now {current}); get it again, reapply the change, or leave metadata.resourceVersion out to overwrite"
    )]
    Conflict { key: String, given: String, current: String },
}

macro_rules! db_err {
    ($($t:ty),*) => {$(
        impl From<$t> for StoreError {
            fn from(e: $t) -> Self {
                StoreError::Db(e.to_string())
            }
        }
    )*};
}
db_err!(redb::TransactionError, redb::TableError, redb::StorageError, redb::CommitError);

/// How an object changed in a watch stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub enum WatchType {
    Added,
    Modified,
    Deleted,
}

/// One change to one object, as Kubernetes' watch events.
#[derive(Debug, Clone, serde::Serialize)]
pub struct WatchEvent {
    #[serde(rename = "type")]
    pub type_: WatchType,
    #[serde(skip)]
    pub key: ObjectKey,
    pub object: Value,
}

/// What `apply` did to one object.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ApplyAction {
    Created,
    Configured,
    Unchanged,
}

/// The handle to the store; cheap to clone.
#[derive(Clone)]
pub struct Store {
    db: Arc<Database>,
    watch: broadcast::Sender<WatchEvent>,
    events: broadcast::Sender<ObjectEvent>,
    /// While set, reads of objects and records fail (fault injection for tests that prove a read error is never
    /// "absent").
    read_fault: Arc<std::sync::atomic::AtomicBool>,
    /// The data keys values are sealed with; `None`: a store without encryption (tests, tools).
    sealer: Arc<RwLock<Option<Arc<Sealer>>>>,
    path: PathBuf,
}

/// What a key rotation did.
#[derive(Debug, Clone, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Rotation {
    /// The key-encryption key every data key is now wrapped by.
    pub key_id: String,
    /// The data keys re-wrapped.
    pub data_keys: usize,
    /// The values sealed again with the new data key.
    pub values: usize,
}

/// An event with the object it is about, as `capstan get events` lists them.
#[derive(Debug, Clone, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ObjectEvent {
    pub involved_object: ObjectKey,
    #[serde(flatten)]
    pub event: Event,
}

fn object_key(key: &ObjectKey) -> String {
    format!("{}/{}/{}", key.kind, key.namespace, key.name)
}

/// The key of an object given as JSON.
pub fn key_of(obj: &Value) -> Result<ObjectKey, StoreError> {
    let kind = obj.get("kind").and_then(Value::as_str).unwrap_or("");
    let meta = obj.get("metadata");
    let name = meta.and_then(|m| m.get("name")).and_then(Value::as_str).ok_or(StoreError::NoName)?;
    Ok(ObjectKey::new(kind, capstan_model::resource::namespace_of(obj), name))
}

/// Where a value is stored, bound into its seal so that it cannot be moved to another place.
fn aad(table: &str, key: &str) -> Vec<u8> {
    format!("{table}\0{key}").into_bytes()
}

fn json_bytes(value: &impl serde::Serialize) -> Result<Vec<u8>, StoreError> {
    serde_json::to_vec(value).map_err(|e| StoreError::Db(e.to_string()))
}

/// Data keys as stored: their ids and wrapped bytes.
type WrappedKeys = Vec<(u32, Vec<u8>)>;

/// The data keys of a store and the active one's id, read without writing anything.
fn read_data_keys(db: &Database) -> Result<(WrappedKeys, u32), StoreError> {
    let tx = db.begin_read()?;
    let keys = match tx.open_table(KEYS) {
        Ok(t) => {
            let mut out = Vec::new();
            for item in t.iter()? {
                let (k, v) = item?;
                let id = k.value().strip_prefix("dek/").and_then(|i| i.parse::<u32>().ok());
                let id = id.ok_or_else(|| StoreError::Db(format!("unknown key record {}", k.value())))?;
                out.push((id, v.value().to_vec()));
            }
            out
        }
        Err(redb::TableError::TableDoesNotExist(_)) => Vec::new(),
        Err(e) => return Err(e.into()),
    };
    let active = match tx.open_table(META) {
        Ok(m) => m.get("active_dek")?.map(|v| v.value()).unwrap_or(0) as u32,
        Err(redb::TableError::TableDoesNotExist(_)) => 0,
        Err(e) => return Err(e.into()),
    };
    Ok((keys, active))
}

/// The metadata field that records an object's owner ([`capstan_model::ManagedFieldsEntry`]).
pub const MANAGED_FIELDS: &str = "managedFields";

/// Annotations that Capstan's own commands set (`capstan rollout restart`); an apply that does not name them
/// keeps them, as server-side apply keeps fields another manager owns.
pub const KEPT_ANNOTATIONS: &[&str] = &["capstan.dev/restartedAt"];

/// One annotation of an object as given.
fn md_annotation<'a>(obj: &'a Value, key: &str) -> Option<&'a Value> {
    obj["metadata"]["annotations"].get(key)
}

fn keep_capstan_annotations(old: &Value, new: &mut Value) {
    for k in KEPT_ANNOTATIONS {
        let Some(v) = old["metadata"]["annotations"].get(*k).cloned() else { continue };
        let md = &mut new["metadata"];
        if !md["annotations"].is_object() {
            md["annotations"] = json!({});
        }
        if md["annotations"].get(*k).is_none() {
            md["annotations"][*k] = v;
        }
    }
}

/// Rewrites every value of the sealed tables that `change` gives a new form for (given the table, the key and
/// the stored bytes); returns how many were rewritten.
fn rewrite_values(
    tx: &redb::WriteTransaction,
    change: impl Fn(&str, &str, Vec<u8>) -> Result<Option<Vec<u8>>, StoreError>,
) -> Result<usize, StoreError> {
    let mut n = 0;
    for def in SEALED_TABLES {
        let mut table = tx.open_table(def)?;
        let name = def.name().to_string();
        let mut all = Vec::new();
        for item in table.iter()? {
            let (k, v) = item?;
            all.push((k.value().to_string(), v.value().to_vec()));
        }
        for (k, v) in all {
            if let Some(new) = change(&name, &k, v)? {
                table.insert(k.as_str(), new.as_slice())?;
                n += 1;
            }
        }
    }
    Ok(n)
}

/// Seals every value that is still stored plain (a store from before encryption); returns how many.
fn seal_plain_values(tx: &redb::WriteTransaction, sealer: &Sealer) -> Result<usize, StoreError> {
    rewrite_values(tx, |table, key, v| match seal::is_sealed(&v) {
        true => Ok(None),
        false => Ok(Some(sealer.seal(&aad(table, key), &v)?)),
    })
}

/// The range of string keys that start with `prefix`.
fn prefix_range(prefix: &str) -> (String, String) {
    (prefix.to_string(), format!("{prefix}\u{10FFFF}"))
}

impl Store {
    /// Opens (or creates) the store at `path` without encryption, migrating older layouts. An encrypted store is
    /// refused.
    pub fn open(path: &Path) -> Result<Store, StoreError> {
        Store::open_with(path, None)
    }

    /// Opens (or creates) the store at `path` with its values encrypted under data keys that `ring` wraps.
    ///
    /// The keys are checked before anything is written: with a wrong key the file is left as it was. A store
    /// without encryption has every value encrypted on this first start, in one transaction; data keys wrapped
    /// by a key of the ring that is not its first are wrapped again by the first.
    pub fn open_sealed(path: &Path, ring: &Keyring) -> Result<Store, StoreError> {
        Store::open_with(path, Some(ring))
    }

    fn open_with(path: &Path, ring: Option<&Keyring>) -> Result<Store, StoreError> {
        let db = Database::create(path).map_err(|e| match e {
            redb::DatabaseError::DatabaseAlreadyOpen => StoreError::Locked(path.display().to_string()),
            other => StoreError::Db(format!("{}: {other}", path.display())),
        })?;
        let shown = path.display().to_string();
        let (wrapped, mut active) = read_data_keys(&db)?;
        let mut deks = Vec::new();
        match ring {
            None if !wrapped.is_empty() => return Err(StoreError::NoKey { path: shown }),
            None => {}
            Some(ring) => {
                for (id, w) in &wrapped {
                    match seal::unwrap(ring, w)? {
                        Some(k) => deks.push((*id, k)),
                        None => {
                            return Err(StoreError::WrongKey {
                                path: shown,
                                wrapped_by: seal::wrapped_by(w),
                                given: ring.ids().join(", "),
                            })
                        }
                    }
                }
            }
        }
        let tx = db.begin_write()?;
        {
            let mut meta = tx.open_table(META)?;
            let found = meta.get("schema_version")?.map(|v| v.value());
            match found {
                Some(v) if v > SCHEMA_VERSION => return Err(StoreError::TooNew { found: v }),
                // Layout 1 is the first; later layouts add their migrations here.
                Some(_) | None => {
                    meta.insert("schema_version", SCHEMA_VERSION)?;
                }
            }
            tx.open_table(OBJECTS)?;
            tx.open_table(EVENTS)?;
            tx.open_table(RECORDS)?;
        }
        let mut sealer = None;
        let mut migrated = 0;
        if let Some(ring) = ring {
            let mut keys = tx.open_table(KEYS)?;
            if deks.is_empty() {
                active = 1;
                let dek: [u8; seal::KEY_LEN] = seal::random()?;
                keys.insert("dek/1", seal::wrap(ring.active(), &dek)?.as_slice())?;
                tx.open_table(META)?.insert("active_dek", u64::from(active))?;
                deks.push((active, dek));
            }
            for (id, w) in &wrapped {
                if seal::wrapped_by(w) != ring.active().id() {
                    let dek = deks.iter().find(|(i, _)| i == id).map(|(_, k)| *k).ok_or(SealError::Open)?;
                    keys.insert(format!("dek/{id}").as_str(), seal::wrap(ring.active(), &dek)?.as_slice())?;
                }
            }
            drop(keys);
            let s = Sealer::new(&deks, active)?;
            migrated = seal_plain_values(&tx, &s)?;
            if migrated > 0 {
                // Cleared once the file is compacted: a compaction that fails is tried again at the next start.
                tx.open_table(META)?.insert(NEEDS_COMPACTION, 1)?;
            }
            sealer = Some(Arc::new(s));
        }
        tx.commit()?;
        let mut db = db;
        let pending = db.begin_read()?.open_table(META)?.get(NEEDS_COMPACTION)?.is_some_and(|v| v.value() == 1);
        if pending {
            // The pages that held the values in the clear are free but not yet overwritten: compacting rewrites
            // the file without them.
            db.compact().map_err(|e| StoreError::Db(format!("{shown}: compacting after encryption: {e}")))?;
            let tx = db.begin_write()?;
            tx.open_table(META)?.remove(NEEDS_COMPACTION)?;
            tx.commit()?;
            db.compact().map_err(|e| StoreError::Db(format!("{shown}: compacting after encryption: {e}")))?;
            if migrated > 0 {
                tracing::info!(values = migrated, "the store's values were stored unencrypted; they are encrypted now");
            }
        }
        let (watch, _) = broadcast::channel(4096);
        let (events, _) = broadcast::channel(1024);
        Ok(Store {
            db: Arc::new(db),
            watch,
            events,
            read_fault: Arc::default(),
            sealer: Arc::new(RwLock::new(sealer)),
            path: path.to_path_buf(),
        })
    }

    /// Wraps every data key with `ring`'s first key, and seals every value again with a new data key, in one
    /// transaction while the store stays in use. Earlier data keys are kept (wrapped by the new key), so a value
    /// sealed by a write that raced the rotation still opens.
    pub fn rotate_key(&self, ring: &Keyring) -> Result<Rotation, StoreError> {
        let old = self.sealer().ok_or_else(|| StoreError::Db("the store is not encrypted".into()))?;
        let tx = self.db.begin_write()?;
        let mut deks = Vec::new();
        {
            let keys = tx.open_table(KEYS)?;
            for item in keys.iter()? {
                let (k, v) = item?;
                let id = k.value().strip_prefix("dek/").and_then(|i| i.parse::<u32>().ok()).unwrap_or(0);
                let dek = seal::unwrap(ring, v.value())?.ok_or_else(|| StoreError::WrongKey {
                    path: self.path.display().to_string(),
                    wrapped_by: seal::wrapped_by(v.value()),
                    given: ring.ids().join(", "),
                })?;
                deks.push((id, dek));
            }
        }
        let next = deks.iter().map(|(i, _)| *i).max().unwrap_or(0) + 1;
        deks.push((next, seal::random()?));
        {
            let mut keys = tx.open_table(KEYS)?;
            for (id, dek) in &deks {
                keys.insert(format!("dek/{id}").as_str(), seal::wrap(ring.active(), dek)?.as_slice())?;
            }
            tx.open_table(META)?.insert("active_dek", u64::from(next))?;
        }
        let new = Arc::new(Sealer::new(&deks, next)?);
        // Until the commit, readers may see values sealed with either key, and writers must keep sealing with the
        // old one (a value they commit first is resealed here only if it was read here): a sealer that knows both
        // and seals with the old one bridges the two.
        let bridge = Arc::new(Sealer::new(&deks, old.active())?);
        *self.sealer.write().unwrap_or_else(|p| p.into_inner()) = Some(bridge);
        let values = rewrite_values(&tx, |table, key, v| {
            let at = aad(table, key);
            let plain = if seal::is_sealed(&v) { old.open(&at, &v)? } else { v };
            Ok(Some(new.seal(&at, &plain)?))
        })?;
        tx.commit()?;
        *self.sealer.write().unwrap_or_else(|p| p.into_inner()) = Some(new);
        Ok(Rotation { key_id: ring.active().id().to_string(), data_keys: deks.len(), values })
    }

    fn sealer(&self) -> Option<Arc<Sealer>> {
        self.sealer.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// A value as it is stored under `key` of `table`: JSON, sealed when the store is encrypted.
    fn encode(&self, table: &str, key: &str, value: &impl serde::Serialize) -> Result<Vec<u8>, StoreError> {
        let plain = json_bytes(value)?;
        match self.sealer() {
            Some(s) => Ok(s.seal(&aad(table, key), &plain)?),
            None => Ok(plain),
        }
    }

    /// The JSON stored under `key` of `table`, opened when sealed.
    fn decode_bytes(&self, table: &str, key: &str, bytes: &[u8]) -> Result<Vec<u8>, StoreError> {
        if !seal::is_sealed(bytes) {
            return Ok(bytes.to_vec());
        }
        match self.sealer() {
            Some(s) => Ok(s.open(&aad(table, key), bytes)?),
            None => Err(StoreError::NoKey { path: self.path.display().to_string() }),
        }
    }

    fn decode(&self, table: &str, key: &str, bytes: &[u8]) -> Result<Value, StoreError> {
        let plain = self.decode_bytes(table, key, bytes)?;
        serde_json::from_slice(&plain).map_err(|source| StoreError::Corrupt { key: key.to_string(), source })
    }

    /// The layout version on disk.
    pub fn schema_version(&self) -> Result<u64, StoreError> {
        let tx = self.db.begin_read()?;
        let meta = tx.open_table(META)?;
        Ok(meta.get("schema_version")?.map(|v| v.value()).unwrap_or(0))
    }

    /// Subscribes to every change from now on.
    pub fn watch(&self) -> broadcast::Receiver<WatchEvent> {
        self.watch.subscribe()
    }

    fn next_rv(meta: &mut redb::Table<&str, u64>) -> Result<u64, StoreError> {
        let rv = meta.get("resource_version")?.map(|v| v.value()).unwrap_or(0) + 1;
        meta.insert("resource_version", rv)?;
        Ok(rv)
    }

    /// Creates or updates every object in one transaction: all are written or none.
    ///
    /// Users own `metadata.labels`, `metadata.annotations` and `spec`; Capstan keeps `status`, `uid`,
    /// `creationTimestamp`, and bumps `generation` only when `spec` changes.
    pub fn apply(&self, objects: Vec<Value>) -> Result<Vec<(ObjectKey, ApplyAction)>, StoreError> {
        self.apply_or_try(objects, false)
    }

    /// What [`Store::apply`] would do, without storing anything (`--dry-run=server`).
    pub fn apply_dry_run(&self, objects: Vec<Value>) -> Result<Vec<(ObjectKey, ApplyAction)>, StoreError> {
        self.apply_or_try(objects, true)
    }

    fn apply_or_try(&self, objects: Vec<Value>, dry_run: bool) -> Result<Vec<(ObjectKey, ApplyAction)>, StoreError> {
        let tx = self.db.begin_write()?;
        let mut outcomes = Vec::new();
        let mut events = Vec::new();
        {
            let mut table = tx.open_table(OBJECTS)?;
            let mut meta = tx.open_table(META)?;
            for mut obj in objects {
                let key = key_of(&obj)?;
                let k = object_key(&key);
                let existing = match table.get(k.as_str())? {
                    Some(v) => Some(self.decode("objects", &k, v.value())?),
                    None => None,
                };
                if let Some(m) = obj.as_object_mut() {
                    m.remove("status");
                }
                // Optimistic concurrency, as Kubernetes: a resourceVersion given ("" is none) must be the current
                // one; given for an object that no longer exists, it is stale too.
                let given = obj["metadata"]["resourceVersion"].as_str().filter(|v| !v.is_empty()).map(str::to_string);
                let (action, stored) = match existing {
                    None if given.is_some() => {
                        let given = given.unwrap_or_default();
                        return Err(StoreError::Conflict {
                            key: key.to_string(),
                            given,
                            current: "none (deleted)".into(),
                        });
                    }
                    None => {
                        let rv = Self::next_rv(&mut meta)?;
                        let md = &mut obj["metadata"];
                        if key.namespace.is_empty() {
                            // Cluster-scoped: no namespace, as Kubernetes writes it.
                            if let Some(m) = md.as_object_mut() {
                                m.remove("namespace");
                            }
                        } else {
                            md["namespace"] = json!(key.namespace);
                        }
                        md["uid"] = json!(uuid::Uuid::new_v4().to_string());
                        md["generation"] = json!(1);
                        md["resourceVersion"] = json!(rv.to_string());
                        md["creationTimestamp"] = json!(Utc::now());
                        (ApplyAction::Created, obj)
                    }
                    Some(mut old) => {
                        let current = old["metadata"]["resourceVersion"].as_str().unwrap_or("").to_string();
                        if let Some(given) = given.filter(|g| *g != current) {
                            return Err(StoreError::Conflict { key: key.to_string(), given, current });
                        }
                        keep_capstan_annotations(&old, &mut obj);
                        // The owner record changes only when a writer gives one (a Sync does; an apply by hand,
                        // whose record the API takes out, keeps the owner it found).
                        let owner = obj["metadata"].get(MANAGED_FIELDS).filter(|m| !m.is_null()).cloned();
                        let owner_changed =
                            owner.as_ref().is_some_and(|o| old["metadata"].get(MANAGED_FIELDS) != Some(o));
                        let spec_changed = old.get("spec") != obj.get("spec");
                        let labels_changed = old["metadata"].get("labels") != obj["metadata"].get("labels")
                            || old["metadata"].get("annotations") != obj["metadata"].get("annotations");
                        if !spec_changed && !labels_changed && !owner_changed {
                            outcomes.push((key, ApplyAction::Unchanged));
                            continue;
                        }
                        let rv = Self::next_rv(&mut meta)?;
                        // A restart (`rollout restart`) is a new generation too, as a changed pod template is on
                        // Kubernetes: `rollout status` then waits for the controller to have seen it.
                        let restart = capstan_model::RESTARTED_AT_ANNOTATION;
                        let restarted = old["metadata"]["annotations"].get(restart) != md_annotation(&obj, restart);
                        let md = old["metadata"].as_object_mut().ok_or(StoreError::NoName)?;
                        for field in ["labels", "annotations"] {
                            match obj["metadata"].get(field) {
                                Some(v) => md.insert(field.into(), v.clone()),
                                None => md.remove(field),
                            };
                        }
                        if let Some(o) = owner {
                            md.insert(MANAGED_FIELDS.into(), o);
                        }
                        if spec_changed || restarted {
                            let g = md.get("generation").and_then(Value::as_i64).unwrap_or(0) + 1;
                            md.insert("generation".into(), json!(g));
                        }
                        md.insert("resourceVersion".into(), json!(rv.to_string()));
                        old["spec"] = obj.get("spec").cloned().unwrap_or(Value::Null);
                        (ApplyAction::Configured, old)
                    }
                };
                let bytes = self.encode("objects", &k, &stored)?;
                table.insert(k.as_str(), bytes.as_slice())?;
                let type_ = if action == ApplyAction::Created { WatchType::Added } else { WatchType::Modified };
                events.push(WatchEvent { type_, key: key.clone(), object: stored });
                outcomes.push((key, action));
            }
        }
        // Nothing changed (every object as stored): no commit, so no write to disk and no fsync, as an unchanged
        // `kubectl apply` writes nothing to etcd.
        if dry_run || events.is_empty() {
            tx.abort()?;
            return Ok(outcomes);
        }
        tx.commit()?;
        for e in events {
            let _ = self.watch.send(e);
        }
        Ok(outcomes)
    }

    /// Makes every read of objects (`get`, `list`) fail while `on`, as a failing disk would: for tests that show a
    /// read error is retried, never taken for "absent" (feature `fault-injection`).
    #[cfg(feature = "fault-injection")]
    pub fn inject_read_faults(&self, on: bool) {
        self.read_fault.store(on, std::sync::atomic::Ordering::SeqCst);
    }

    fn read_fault(&self) -> Result<(), StoreError> {
        if self.read_fault.load(std::sync::atomic::Ordering::SeqCst) {
            return Err(StoreError::Db("injected read fault".into()));
        }
        Ok(())
    }

    /// One object.
    pub fn get(&self, key: &ObjectKey) -> Result<Option<Value>, StoreError> {
        self.read_fault()?;
        let tx = self.db.begin_read()?;
        let table = tx.open_table(OBJECTS)?;
        let k = object_key(key);
        match table.get(k.as_str())? {
            Some(v) => Ok(Some(self.decode("objects", &k, v.value())?)),
            None => Ok(None),
        }
    }

    /// Every object of a kind, in one namespace or all, ordered by namespace and name.
    pub fn list(&self, kind: &str, namespace: Option<&str>) -> Result<Vec<Value>, StoreError> {
        self.read_fault()?;
        let tx = self.db.begin_read()?;
        let table = tx.open_table(OBJECTS)?;
        let prefix = match namespace {
            Some(ns) => format!("{kind}/{ns}/"),
            None => format!("{kind}/"),
        };
        let (lo, hi) = prefix_range(&prefix);
        let mut out = Vec::new();
        for item in table.range(lo.as_str()..hi.as_str())? {
            let (k, v) = item?;
            out.push(self.decode("objects", k.value(), v.value())?);
        }
        Ok(out)
    }

    /// Deletes an object (and its events); returns it if it existed.
    pub fn delete(&self, key: &ObjectKey) -> Result<Option<Value>, StoreError> {
        let tx = self.db.begin_write()?;
        let k = object_key(key);
        let old = {
            let mut table = tx.open_table(OBJECTS)?;
            let old = match table.remove(k.as_str())? {
                Some(v) => Some(self.decode("objects", &k, v.value())?),
                None => None,
            };
            let mut events = tx.open_table(EVENTS)?;
            let (lo, hi) = prefix_range(&format!("{k}#"));
            events.retain_in(lo.as_str()..hi.as_str(), |_, _| false)?;
            if old.is_some() {
                let mut meta = tx.open_table(META)?;
                Self::next_rv(&mut meta)?;
            }
            old
        };
        tx.commit()?;
        if let Some(obj) = &old {
            let _ = self.watch.send(WatchEvent { type_: WatchType::Deleted, key: key.clone(), object: obj.clone() });
        }
        Ok(old)
    }

    /// Replaces the status of an object if it differs; returns whether anything was written.
    ///
    /// Status writes are committed with eventual durability: they are observations, rebuilt after a crash.
    pub fn update_status(&self, key: &ObjectKey, status: Value) -> Result<bool, StoreError> {
        let mut tx = self.db.begin_write()?;
        tx.set_durability(Durability::Eventual);
        let k = object_key(key);
        let updated = {
            let mut table = tx.open_table(OBJECTS)?;
            let current = match table.get(k.as_str())? {
                Some(v) => Some(self.decode("objects", &k, v.value())?),
                None => None,
            };
            match current {
                Some(mut obj) if obj.get("status") != Some(&status) => {
                    let mut meta = tx.open_table(META)?;
                    let rv = Self::next_rv(&mut meta)?;
                    obj["status"] = status;
                    obj["metadata"]["resourceVersion"] = json!(rv.to_string());
                    let bytes = self.encode("objects", &k, &obj)?;
                    table.insert(k.as_str(), bytes.as_slice())?;
                    Some(obj)
                }
                _ => None,
            }
        };
        tx.commit()?;
        match updated {
            Some(obj) => {
                let _ = self.watch.send(WatchEvent { type_: WatchType::Modified, key: key.clone(), object: obj });
                Ok(true)
            }
            None => Ok(false),
        }
    }

    /// Records an event on an object; the same event repeated in a row is counted, not duplicated.
    pub fn record_event(
        &self,
        key: &ObjectKey,
        type_: EventType,
        reason: &str,
        message: &str,
    ) -> Result<(), StoreError> {
        let mut tx = self.db.begin_write()?;
        tx.set_durability(Durability::Eventual);
        let recorded;
        {
            let mut table = tx.open_table(EVENTS)?;
            let prefix = format!("{}#", object_key(key));
            let (lo, hi) = prefix_range(&prefix);
            let now = Utc::now();
            let mut keys = Vec::new();
            let mut last: Option<(String, Event)> = None;
            for item in table.range(lo.as_str()..hi.as_str())? {
                let (k, v) = item?;
                keys.push(k.value().to_string());
                let plain = self.decode_bytes("events", k.value(), v.value())?;
                last = serde_json::from_slice::<Event>(&plain).ok().map(|e| (k.value().to_string(), e));
            }
            match last {
                Some((k, mut e)) if e.reason == reason && e.message == message && e.type_ == type_ => {
                    e.count += 1;
                    e.last_timestamp = now;
                    let bytes = self.encode("events", &k, &e)?;
                    table.insert(k.as_str(), bytes.as_slice())?;
                    recorded = e;
                }
                last => {
                    let seq =
                        last.and_then(|(k, _)| k.rsplit('#').next().and_then(|s| s.parse::<u64>().ok())).unwrap_or(0)
                            + 1;
                    let e = Event {
                        type_,
                        reason: reason.to_string(),
                        message: message.to_string(),
                        first_timestamp: now,
                        last_timestamp: now,
                        count: 1,
                    };
                    let at = format!("{prefix}{seq:020}");
                    let bytes = self.encode("events", &at, &e)?;
                    table.insert(at.as_str(), bytes.as_slice())?;
                    keys.push(String::new());
                    let excess = keys.len().saturating_sub(EVENTS_PER_OBJECT);
                    for old in keys.iter().take(excess) {
                        table.remove(old.as_str())?;
                    }
                    recorded = e;
                }
            }
        }
        tx.commit()?;
        let _ = self.events.send(ObjectEvent { involved_object: key.clone(), event: recorded });
        Ok(())
    }

    /// Every recorded event of every object (of one namespace), oldest first.
    pub fn all_events(&self, namespace: Option<&str>) -> Result<Vec<ObjectEvent>, StoreError> {
        let tx = self.db.begin_read()?;
        let table = tx.open_table(EVENTS)?;
        let mut out = Vec::new();
        for item in table.iter()? {
            let (k, v) = item?;
            let Some((object, _)) = k.value().rsplit_once('#') else { continue };
            let mut parts = object.splitn(3, '/');
            let (Some(kind), Some(ns), Some(name)) = (parts.next(), parts.next(), parts.next()) else { continue };
            if namespace.is_some_and(|n| n != ns) {
                continue;
            }
            let plain = self.decode_bytes("events", k.value(), v.value())?;
            if let Ok(event) = serde_json::from_slice::<Event>(&plain) {
                out.push(ObjectEvent { involved_object: ObjectKey::new(kind, ns, name), event });
            }
        }
        out.sort_by_key(|e| e.event.last_timestamp);
        Ok(out)
    }

    /// Subscribes to every event recorded from now on.
    pub fn watch_events(&self) -> broadcast::Receiver<ObjectEvent> {
        self.events.subscribe()
    }

    /// The recorded events of an object, oldest first.
    pub fn events(&self, key: &ObjectKey) -> Result<Vec<Event>, StoreError> {
        let tx = self.db.begin_read()?;
        let table = tx.open_table(EVENTS)?;
        let (lo, hi) = prefix_range(&format!("{}#", object_key(key)));
        let mut out = Vec::new();
        for item in table.range(lo.as_str()..hi.as_str())? {
            let (k, v) = item?;
            let plain = self.decode_bytes("events", k.value(), v.value())?;
            if let Ok(e) = serde_json::from_slice(&plain) {
                out.push(e);
            }
        }
        Ok(out)
    }

    /// Writes a runtime record (durably: runtimes use them to find their processes after a restart).
    pub fn put_record(&self, key: &str, value: &Value) -> Result<(), StoreError> {
        let tx = self.db.begin_write()?;
        {
            let mut table = tx.open_table(RECORDS)?;
            let bytes = self.encode("records", key, value)?;
            table.insert(key, bytes.as_slice())?;
        }
        tx.commit()?;
        Ok(())
    }

    /// Removes a runtime record.
    pub fn delete_record(&self, key: &str) -> Result<(), StoreError> {
        let tx = self.db.begin_write()?;
        {
            let mut table = tx.open_table(RECORDS)?;
            table.remove(key)?;
        }
        tx.commit()?;
        Ok(())
    }

    /// Every runtime record whose key starts with `prefix`.
    pub fn records(&self, prefix: &str) -> Result<Vec<(String, Value)>, StoreError> {
        self.read_fault()?;
        let tx = self.db.begin_read()?;
        let table = tx.open_table(RECORDS)?;
        let (lo, hi) = prefix_range(prefix);
        let mut out = Vec::new();
        for item in table.range(lo.as_str()..hi.as_str())? {
            let (k, v) = item?;
            out.push((k.value().to_string(), self.decode("records", k.value(), v.value())?));
        }
        Ok(out)
    }

    /// How many objects are stored.
    pub fn count(&self) -> Result<u64, StoreError> {
        let tx = self.db.begin_read()?;
        Ok(tx.open_table(OBJECTS)?.len()?)
    }
}

#[cfg(test)]
mod sealed_tests {
    use super::*;

    const SECRET: &str = "hunter2-in-the-store";

    fn secret() -> Value {
        json!({"apiVersion": "capstan.dev/v1alpha1", "kind": "Secret", "metadata": {"name": "db"},
               "spec": {"stringData": {"password": SECRET}}})
    }

    fn contains(path: &Path, needle: &str) -> bool {
        std::fs::read(path).unwrap().windows(needle.len()).any(|w| w == needle.as_bytes())
    }

    #[test]
    fn a_plain_store_is_encrypted_on_first_sealed_start_and_reads_the_same() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.redb");
        {
            let plain = Store::open(&path).unwrap();
            plain.apply(vec![secret()]).unwrap();
            plain.put_record("replica/default/a/0", &json!({"env": {"PASSWORD": SECRET}})).unwrap();
            plain.record_event(&ObjectKey::new("Secret", "default", "db"), EventType::Normal, "Made", SECRET).unwrap();
        }
        assert!(contains(&path, SECRET), "the old layout holds it in the clear");
        let ring = Keyring::generate().unwrap();
        let before = {
            let store = Store::open_sealed(&path, &ring).unwrap();
            let got = store.get(&ObjectKey::new("Secret", "default", "db")).unwrap().unwrap();
            assert_eq!(got["spec"]["stringData"]["password"], SECRET);
            assert_eq!(store.records("replica/").unwrap()[0].1["env"]["PASSWORD"], SECRET);
            assert_eq!(store.events(&ObjectKey::new("Secret", "default", "db")).unwrap()[0].message, SECRET);
            got
        };
        assert!(!contains(&path, SECRET), "no value is left in the clear");
        assert!(matches!(Store::open(&path), Err(StoreError::NoKey { .. })), "no key: refused");
        let again = Store::open_sealed(&path, &ring).unwrap();
        assert_eq!(again.get(&ObjectKey::new("Secret", "default", "db")).unwrap().unwrap(), before);
    }

    #[test]
    fn a_wrong_key_is_refused_and_leaves_the_file_byte_for_byte_as_it_was() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.redb");
        let ring = Keyring::generate().unwrap();
        Store::open_sealed(&path, &ring).unwrap().apply(vec![secret()]).unwrap();
        let bytes = std::fs::read(&path).unwrap();
        let wrong = Keyring::generate().unwrap();
        match Store::open_sealed(&path, &wrong) {
            Err(StoreError::WrongKey { wrapped_by, given, .. }) => {
                assert_eq!(wrapped_by, ring.active().id());
                assert_eq!(given, wrong.active().id());
            }
            other => panic!("{:?}", other.err()),
        }
        assert_eq!(std::fs::read(&path).unwrap(), bytes, "unchanged");
        assert!(Store::open_sealed(&path, &ring).is_ok());
    }

    #[test]
    fn rotation_rewraps_every_key_reseals_every_value_and_the_old_key_no_longer_opens() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.redb");
        let old = Keyring::generate().unwrap();
        let store = Store::open_sealed(&path, &old).unwrap();
        store.apply(vec![secret()]).unwrap();
        let new = old.with_first(Keyring::generate().unwrap().active().clone());
        let done = store.rotate_key(&new).unwrap();
        assert_eq!((done.key_id.as_str(), done.data_keys, done.values), (new.active().id(), 2, 1));
        // Still serving, reads and writes, during and after.
        let key = ObjectKey::new("Secret", "default", "db");
        assert_eq!(store.get(&key).unwrap().unwrap()["spec"]["stringData"]["password"], SECRET);
        store.apply(vec![json!({"kind": "Secret", "metadata": {"name": "b"}, "spec": {}})]).unwrap();
        drop(store);
        let only_new = Keyring::new(vec![new.active().clone()]).unwrap();
        let reopened = Store::open_sealed(&path, &only_new).unwrap();
        assert_eq!(reopened.list("Secret", None).unwrap().len(), 2);
        drop(reopened);
        assert!(matches!(Store::open_sealed(&path, &old), Err(StoreError::WrongKey { .. })));
    }

    /// Readers and writers on other threads all through several rotations: no read fails (a value sealed under
    /// the old key or the new one opens with whichever sealer the reader finds), no write is lost, and afterwards
    /// the last key alone opens everything.
    #[test]
    fn rotation_under_concurrent_reads_and_writes_loses_nothing_and_fails_no_read() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.redb");
        let mut ring = Keyring::generate().unwrap();
        let store = Store::open_sealed(&path, &ring).unwrap();
        let named = |i: usize| {
            json!({"kind": "Secret", "metadata": {"name": format!("s{i}")},
                                     "spec": {"stringData": {"password": format!("{SECRET}-{i}")}}})
        };
        store.apply((0..50).map(named).collect()).unwrap();
        let stop = std::sync::atomic::AtomicBool::new(false);
        let started = std::sync::atomic::AtomicUsize::new(0);
        let progress = std::sync::atomic::AtomicUsize::new(0);
        let (reads, written) = std::thread::scope(|s| {
            let readers: Vec<_> = (0..2)
                .map(|_| {
                    s.spawn(|| {
                        let mut reads = 0u64;
                        started.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                        while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                            let all = store.list("Secret", None).expect("a list during rotation");
                            assert!(all.len() >= 50);
                            for (n, o) in all.iter().enumerate().take(5) {
                                assert!(
                                    o["spec"]["stringData"]["password"].as_str().unwrap().starts_with(SECRET),
                                    "{n}"
                                );
                            }
                            let one = store.get(&ObjectKey::new("Secret", "default", "s7")).expect("a get");
                            assert_eq!(one.unwrap()["spec"]["stringData"]["password"], format!("{SECRET}-7"));
                            reads += 1;
                            progress.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                        }
                        reads
                    })
                })
                .collect();
            let writer = s.spawn(|| {
                let mut i = 50;
                started.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    store.apply(vec![named(i)]).expect("a write during rotation");
                    i += 1;
                }
                i
            });
            while started.load(std::sync::atomic::Ordering::SeqCst) < 3 {
                std::thread::yield_now();
            }
            for _ in 0..5 {
                ring = ring.with_first(Keyring::generate().unwrap().active().clone());
                store.rotate_key(&ring).expect("a rotation while in use");
                // The readers read again between rotations, so each rotation meets reads that began under it.
                let seen = progress.load(std::sync::atomic::Ordering::SeqCst);
                while progress.load(std::sync::atomic::Ordering::SeqCst) < seen + 2 {
                    std::thread::yield_now();
                }
            }
            stop.store(true, std::sync::atomic::Ordering::Relaxed);
            let reads: u64 = readers.into_iter().map(|r| r.join().expect("a reader")).sum();
            (reads, writer.join().expect("the writer"))
        });
        assert!(reads > 0, "the readers ran during the rotations");
        drop(store);
        let only_last = Keyring::new(vec![ring.active().clone()]).unwrap();
        let reopened = Store::open_sealed(&path, &only_last).unwrap();
        let all = reopened.list("Secret", None).unwrap();
        assert_eq!(all.len(), written, "every write is there");
        for o in &all {
            let name = o["metadata"]["name"].as_str().unwrap();
            assert_eq!(o["spec"]["stringData"]["password"], format!("{SECRET}-{}", &name[1..]));
        }
        assert!(!contains(&path, SECRET), "nothing in the clear after rotations");
    }

    #[test]
    fn a_key_file_with_a_new_first_key_rewraps_at_start() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.redb");
        let old = Keyring::generate().unwrap();
        Store::open_sealed(&path, &old).unwrap().apply(vec![secret()]).unwrap();
        let both = old.with_first(Keyring::generate().unwrap().active().clone());
        drop(Store::open_sealed(&path, &both).unwrap());
        let only_new = Keyring::new(vec![both.active().clone()]).unwrap();
        let store = Store::open_sealed(&path, &only_new).unwrap();
        assert_eq!(store.list("Secret", None).unwrap().len(), 1);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn app(name: &str, replicas: i64) -> Value {
        json!({"apiVersion": "capstan.dev/v1alpha1", "kind": "App", "metadata": {"name": name},
               "spec": {"replicas": replicas, "run": {"command": ["x"]}}})
    }

    /// A restart is a new generation (as a changed pod template is on Kubernetes); an apply that leaves the restart
    /// out keeps it, and is no new generation.
    #[test]
    fn a_restart_is_a_new_generation_and_an_apply_without_it_keeps_it() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("s.redb")).unwrap();
        store.apply(vec![app("a", 1)]).unwrap();
        let mut restarted = app("a", 1);
        restarted["metadata"]["annotations"] = json!({"capstan.dev/restartedAt": "2026-12-07T03:00:00Z"});
        store.apply(vec![restarted]).unwrap();
        let key = ObjectKey::new("App", "default", "a");
        assert_eq!(store.get(&key).unwrap().unwrap()["metadata"]["generation"], 2);
        assert_eq!(store.apply(vec![app("a", 1)]).unwrap()[0].1, ApplyAction::Unchanged);
        let o = store.get(&key).unwrap().unwrap();
        assert_eq!(o["metadata"]["generation"], 2);
        assert_eq!(o["metadata"]["annotations"]["capstan.dev/restartedAt"], "2026-12-07T03:00:00Z");
    }

    /// An apply that changes nothing writes nothing: the file is byte for byte as it was, and no watch event goes out.
    #[test]
    fn an_unchanged_apply_writes_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.redb");
        let store = Store::open(&path).unwrap();
        store.apply(vec![app("a", 1)]).unwrap();
        let before = std::fs::read(&path).unwrap();
        let mut watch = store.watch();
        let again = store.apply(vec![app("a", 1)]).unwrap();
        assert_eq!(again[0].1, ApplyAction::Unchanged);
        assert_eq!(std::fs::read(&path).unwrap(), before, "no transaction was committed");
        assert!(watch.try_recv().is_err(), "no event");
        store.apply(vec![app("a", 2)]).unwrap();
        assert_ne!(std::fs::read(&path).unwrap(), before, "a change is written");
    }

    /// As Kubernetes: an apply that names a resourceVersion is refused when the object has changed since; one
    /// that names the current one, or none, goes through.
    #[test]
    fn a_stale_resource_version_is_a_conflict() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("s.redb")).unwrap();
        store.apply(vec![app("a", 1)]).unwrap();
        let key = ObjectKey::new("App", "default", "a");
        let read = store.get(&key).unwrap().unwrap();
        let with_rv = |replicas: i64, rv: &Value| {
            let mut o = app("a", replicas);
            o["metadata"]["resourceVersion"] = rv.clone();
            o
        };
        let rv = read["metadata"]["resourceVersion"].clone();
        assert_eq!(store.apply(vec![with_rv(2, &rv)]).unwrap()[0].1, ApplyAction::Configured);
        let err = store.apply(vec![with_rv(3, &rv)]).unwrap_err();
        assert!(matches!(err, StoreError::Conflict { .. }), "{err}");
        assert!(err.to_string().contains("was changed since it was read"), "{err}");
        assert_eq!(store.get(&key).unwrap().unwrap()["spec"]["replicas"], 2, "nothing of the refused apply stored");
        assert_eq!(
            store.apply(vec![app("a", 3)]).unwrap()[0].1,
            ApplyAction::Configured,
            "no resourceVersion: applied"
        );
        assert_eq!(store.apply(vec![with_rv(4, &json!(""))]).unwrap()[0].1, ApplyAction::Configured, "\"\" is none");
        // A writer holding a version of a deleted object does not bring it back.
        store.delete(&key).unwrap();
        assert!(matches!(store.apply(vec![with_rv(5, &rv)]), Err(StoreError::Conflict { .. })));
        assert!(store.get(&key).unwrap().is_none());
    }

    #[test]
    fn generation_moves_only_with_spec() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("s.redb")).unwrap();
        let out = store.apply(vec![app("a", 1)]).unwrap();
        assert_eq!(out[0].1, ApplyAction::Created);
        let key = ObjectKey::new("App", "default", "a");
        let o = store.get(&key).unwrap().unwrap();
        assert_eq!(o["metadata"]["generation"], 1);
        let rv1: u64 = o["metadata"]["resourceVersion"].as_str().unwrap().parse().unwrap();

        assert_eq!(store.apply(vec![app("a", 1)]).unwrap()[0].1, ApplyAction::Unchanged);
        assert!(store.update_status(&key, json!({"replicas": 1})).unwrap());
        assert!(!store.update_status(&key, json!({"replicas": 1})).unwrap());
        let o = store.get(&key).unwrap().unwrap();
        assert_eq!(o["metadata"]["generation"], 1);
        let rv2: u64 = o["metadata"]["resourceVersion"].as_str().unwrap().parse().unwrap();
        assert!(rv2 > rv1);

        let mut labelled = app("a", 1);
        labelled["metadata"]["labels"] = json!({"team": "x"});
        assert_eq!(store.apply(vec![labelled]).unwrap()[0].1, ApplyAction::Configured);
        assert_eq!(store.get(&key).unwrap().unwrap()["metadata"]["generation"], 1);

        assert_eq!(store.apply(vec![app("a", 3)]).unwrap()[0].1, ApplyAction::Configured);
        let o = store.get(&key).unwrap().unwrap();
        assert_eq!(o["metadata"]["generation"], 2);
        assert_eq!(o["status"]["replicas"], 1, "status is kept across spec changes");
        assert!(o["metadata"].get("labels").is_none(), "labels removed from the manifest are removed");
    }

    #[test]
    fn an_owner_record_survives_writes_that_do_not_give_one() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("s.redb")).unwrap();
        let key = ObjectKey::new("App", "default", "a");
        let owned_by = |who: &str| {
            let mut v = app("a", 1);
            v["metadata"][MANAGED_FIELDS] = json!([{"manager": who, "operation": "Apply"}]);
            v
        };
        store.apply(vec![owned_by("sync.capstan.dev/default/s")]).unwrap();
        // A change by hand (no record given) keeps the owner.
        assert_eq!(store.apply(vec![app("a", 2)]).unwrap()[0].1, ApplyAction::Configured);
        let o = store.get(&key).unwrap().unwrap();
        assert_eq!(o["metadata"][MANAGED_FIELDS][0]["manager"], "sync.capstan.dev/default/s");
        assert_eq!(o["spec"]["replicas"], 2);
        // A writer that gives another owner takes it over, even with nothing else changed.
        let mut other = owned_by("sync.capstan.dev/default/t");
        other["spec"]["replicas"] = json!(2);
        assert_eq!(store.apply(vec![other]).unwrap()[0].1, ApplyAction::Configured);
        let o = store.get(&key).unwrap().unwrap();
        assert_eq!(o["metadata"][MANAGED_FIELDS][0]["manager"], "sync.capstan.dev/default/t");
    }

    #[test]
    fn survives_reopen_and_keeps_schema_version() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.redb");
        {
            let store = Store::open(&path).unwrap();
            store.apply(vec![app("a", 1), app("b", 2)]).unwrap();
            store.put_record("replica/default/a/0", &json!({"pid": 42})).unwrap();
        }
        let store = Store::open(&path).unwrap();
        assert_eq!(store.schema_version().unwrap(), SCHEMA_VERSION);
        assert_eq!(store.list("App", None).unwrap().len(), 2);
        assert_eq!(store.records("replica/").unwrap()[0].1["pid"], 42);
        let second = Store::open(&path);
        assert!(matches!(second, Err(StoreError::Locked(_))), "a second open is refused");
    }

    #[test]
    fn batch_is_atomic() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("s.redb")).unwrap();
        let bad = json!({"kind": "App", "metadata": {}});
        assert!(store.apply(vec![app("a", 1), bad]).is_err());
        assert!(store.list("App", None).unwrap().is_empty(), "nothing from a failed batch is stored");
    }

    #[tokio::test]
    async fn watch_sees_changes() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("s.redb")).unwrap();
        let mut w = store.watch();
        store.apply(vec![app("a", 1)]).unwrap();
        store.delete(&ObjectKey::new("App", "default", "a")).unwrap();
        assert_eq!(w.recv().await.unwrap().type_, WatchType::Added);
        assert_eq!(w.recv().await.unwrap().type_, WatchType::Deleted);
    }

    #[test]
    fn events_are_counted_and_bounded() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("s.redb")).unwrap();
        let key = ObjectKey::new("App", "default", "a");
        store.record_event(&key, EventType::Normal, "Started", "replica a-0").unwrap();
        store.record_event(&key, EventType::Normal, "Started", "replica a-0").unwrap();
        let ev = store.events(&key).unwrap();
        assert_eq!(ev.len(), 1);
        assert_eq!(ev[0].count, 2);
        for i in 0..(EVENTS_PER_OBJECT + 10) {
            store.record_event(&key, EventType::Warning, "BackOff", &format!("n{i}")).unwrap();
        }
        let ev = store.events(&key).unwrap();
        assert_eq!(ev.len(), EVENTS_PER_OBJECT);
        assert_eq!(ev.last().unwrap().message, format!("n{}", EVENTS_PER_OBJECT + 9));
    }
}
