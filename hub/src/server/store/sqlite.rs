//! The embedded store: one SQLite database file in the hub's data folder.
//!
//! - `PRAGMA journal_mode=WAL` and `synchronous=FULL`: a commit that returned `Ok` is in the write-ahead log and
//!   fsynced, so it survives the hub being killed (SIGKILL) and power loss.
//! - Migrations: `schema_migrations(version)` records each applied step of [`MIGRATIONS`]; at open every missing
//!   step runs in its own transaction, so reopening applies nothing twice, and a database written by a newer hub
//!   (an unknown version) is refused rather than misread.
//! - Revisions store the canonical YAML of their whole set (`DocumentSet::to_yaml`); reading one parses and
//!   validates it again, so what a reader gets is exactly what was committed.
//! - rusqlite is blocking: one connection behind a mutex, and every call runs on tokio's blocking pool, so the async
//!   API never blocks the runtime. The mutex also serialises writers within the process; `BEGIN IMMEDIATE` and the
//!   parent check serialise them across processes.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use rusqlite::{Connection, OptionalExtension, Row, Transaction, TransactionBehavior, params};
use tollgate_common::document::DocumentSet;

use super::{
    AGENT_COLUMNS, AgentRecord, CLUSTER_COLUMNS, ClusterRecord, ClusterReport, EncodedAgent, EncodedReport, Hello,
    HistoryEntry, NewRevision, Operation, REVISION_COLUMNS, Registration, Revision, RevisionInfo, Store, StoreError,
    TokenUse, from_json, report_sql, to_json, to_sql_u64,
};

/// The database file's name within the data folder.
pub const DATABASE_FILE: &str = "tollgate-hub.db";

/// A file in the data folder that `tollgate-hub serve` holds an exclusive lock on while it serves, so that a second
/// hub, or a restore, cannot use the folder at the same time.
pub const LOCK_FILE: &str = "tollgate-hub.lock";

/// How long a statement waits for another connection's lock before failing.
const BUSY_TIMEOUT: Duration = Duration::from_secs(10);

/// The schema, as ordered steps `(version, SQL)`; versions are 1, 2, 3, … Append new steps; never edit one that
/// has shipped.
pub const MIGRATIONS: &[(u32, &str)] = &[
    (
        1,
        "CREATE TABLE revisions (
        number INTEGER PRIMARY KEY,
        created_unix_millis INTEGER NOT NULL,
        operation TEXT NOT NULL CHECK (operation IN ('apply', 'delete', 'rollback')),
        summary TEXT NOT NULL,
        document_count INTEGER NOT NULL,
        documents_yaml TEXT NOT NULL
    );
    CREATE TABLE clusters (
        id TEXT PRIMARY KEY,
        labels_json TEXT NOT NULL,
        first_seen_unix_millis INTEGER NOT NULL,
        last_seen_unix_millis INTEGER NOT NULL,
        facts_json TEXT,
        applied_revision INTEGER NOT NULL DEFAULT 0
    );
    CREATE TABLE agents (
        cluster_id TEXT NOT NULL REFERENCES clusters (id) ON DELETE CASCADE,
        namespace TEXT NOT NULL,
        name TEXT NOT NULL,
        labels_json TEXT NOT NULL,
        verified INTEGER NOT NULL,
        verification_reason TEXT NOT NULL,
        mode TEXT NOT NULL,
        rule_count INTEGER NOT NULL,
        rule_sources_json TEXT NOT NULL,
        applied_revision INTEGER NOT NULL,
        errors_json TEXT NOT NULL,
        dropped_json TEXT NOT NULL,
        PRIMARY KEY (cluster_id, namespace, name)
    ) WITHOUT ROWID;",
    ),
    (
        2,
        "ALTER TABLE agents ADD COLUMN plan_inputs_json TEXT NOT NULL DEFAULT '';",
    ),
    (3, "ALTER TABLE clusters ADD COLUMN connected_replica TEXT;"),
    (
        4,
        "CREATE TABLE store_meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
    ALTER TABLE clusters ADD COLUMN conditions_json TEXT NOT NULL DEFAULT '[]';
    ALTER TABLE clusters ADD COLUMN adopt_requested INTEGER NOT NULL DEFAULT 0;",
    ),
    (
        5,
        "ALTER TABLE agents ADD COLUMN names_json TEXT NOT NULL DEFAULT '[]';",
    ),
    (
        6,
        "ALTER TABLE agents ADD COLUMN widened_by_json TEXT NOT NULL DEFAULT '[]';",
    ),
    // The cluster registry: admins own the labels selectors match; clusters known before keep the labels they last
    // reported, once. Removed ids remember when, to refuse their older certificates. Revisions name their author.
    (
        7,
        "ALTER TABLE clusters ADD COLUMN reported_labels_json TEXT NOT NULL DEFAULT '{}';
    ALTER TABLE clusters ADD COLUMN registered_unix_millis INTEGER NOT NULL DEFAULT 0;
    ALTER TABLE clusters ADD COLUMN refuse_certificates_before_unix_millis INTEGER NOT NULL DEFAULT 0;
    ALTER TABLE clusters ADD COLUMN certificate_not_after_unix_millis INTEGER NOT NULL DEFAULT 0;
    UPDATE clusters SET reported_labels_json = labels_json, registered_unix_millis = first_seen_unix_millis;
    CREATE TABLE removed_clusters (id TEXT PRIMARY KEY, removed_unix_millis INTEGER NOT NULL);
    ALTER TABLE revisions ADD COLUMN author TEXT NOT NULL DEFAULT '';",
    ),
    // Join tokens: the SHA-256 of each secret, one per registered cluster, gone with the cluster.
    (
        8,
        "CREATE TABLE join_tokens (
        cluster_id TEXT PRIMARY KEY REFERENCES clusters (id) ON DELETE CASCADE,
        secret_sha256 TEXT NOT NULL,
        expires_unix_millis INTEGER NOT NULL
    );",
    ),
    // Plan inputs as their protobuf encoding (they were JSON); agents reported before are previewed again after
    // their spoke's next inventory, which every connection sends.
    (
        9,
        "ALTER TABLE agents DROP COLUMN plan_inputs_json;
    ALTER TABLE agents ADD COLUMN plan_inputs BLOB;",
    ),
];

/// A hello: reported labels, certificate expiry, first and last seen; the registration back.
const HELLO: &str = "UPDATE clusters SET
         reported_labels_json = ?2,
         certificate_not_after_unix_millis = ?4,
         first_seen_unix_millis = CASE WHEN first_seen_unix_millis = 0 THEN ?3 ELSE first_seen_unix_millis END,
         last_seen_unix_millis = MAX(last_seen_unix_millis, ?3)
     WHERE id = ?1
     RETURNING labels_json, refuse_certificates_before_unix_millis, adopt_requested";

/// The embedded SQLite store. Cheap to clone: clones share one connection.
#[derive(Clone)]
pub struct SqliteStore {
    inner: Arc<Inner>,
}

struct Inner {
    path: PathBuf,
    store_id: String,
    connection: Mutex<Connection>,
}

impl fmt::Debug for SqliteStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SqliteStore").field("path", &self.inner.path).finish()
    }
}

impl From<rusqlite::Error> for StoreError {
    fn from(error: rusqlite::Error) -> Self {
        Self::backend("sqlite", error)
    }
}

impl SqliteStore {
    /// Opens (creating the folder and the database when missing) `data_dir/tollgate-hub.db`, sets WAL with full
    /// synchronisation and foreign keys, and applies the missing migrations. Blocking: call it at start-up, before
    /// serving, or inside `spawn_blocking`.
    pub fn open(data_dir: &Path) -> Result<Self, StoreError> {
        std::fs::create_dir_all(data_dir)
            .map_err(|e| StoreError::backend(format!("cannot create data folder {}", data_dir.display()), e))?;
        let path = data_dir.join(DATABASE_FILE);
        let mut connection =
            Connection::open(&path).map_err(|e| StoreError::backend(format!("cannot open {}", path.display()), e))?;
        let in_file = |error: StoreError| error.within(path.display());
        configure(&connection).map_err(in_file)?;
        migrate(&mut connection).map_err(in_file)?;
        let store_id = ensure_store_id(&connection).map_err(in_file)?;
        Ok(Self {
            inner: Arc::new(Inner {
                path,
                store_id,
                connection: Mutex::new(connection),
            }),
        })
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.inner.path
    }

    /// Runs `f` with the connection on tokio's blocking pool.
    async fn run<T, F>(&self, f: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&mut Connection) -> Result<T, StoreError> + Send + 'static,
    {
        let inner = Arc::clone(&self.inner);
        tokio::task::spawn_blocking(move || {
            // A panic while holding the lock cannot leave a transaction half-applied (an unfinished rusqlite
            // transaction rolls back when dropped), so a poisoned lock is safe to keep using.
            let mut connection = inner.connection.lock().unwrap_or_else(PoisonError::into_inner);
            f(&mut connection)
        })
        .await
        .map_err(|e| StoreError::backend("store task failed", e))?
    }
}

/// Takes the data folder's exclusive lock ([`LOCK_FILE`]); fails at once, naming the folder, when another process
/// holds it. Released when the returned file is dropped (or the process ends).
pub fn lock_data_dir(data_dir: &Path) -> Result<std::fs::File, StoreError> {
    let path = data_dir.join(LOCK_FILE);
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(|e| StoreError::backend(format!("cannot open {}", path.display()), e))?;
    match file.try_lock() {
        Ok(()) => Ok(file),
        Err(std::fs::TryLockError::WouldBlock) => Err(StoreError::Invalid(format!(
            "{} is in use by another process (a running hub holds {}); stop it first",
            data_dir.display(),
            LOCK_FILE
        ))),
        Err(std::fs::TryLockError::Error(e)) => Err(StoreError::backend(format!("cannot lock {}", path.display()), e)),
    }
}

pub(super) fn configure(connection: &Connection) -> Result<(), StoreError> {
    connection.busy_timeout(BUSY_TIMEOUT)?;
    let mode: String = connection.query_row("PRAGMA journal_mode = WAL", [], |row| row.get(0))?;
    if !mode.eq_ignore_ascii_case("wal") {
        return Err(StoreError::Invalid(format!(
            "cannot switch the journal to WAL (still {mode})"
        )));
    }
    connection.execute_batch("PRAGMA synchronous = FULL; PRAGMA foreign_keys = ON;")?;
    Ok(())
}

/// Applies every step of [`MIGRATIONS`] not yet recorded, each in its own transaction; refuses a database whose
/// schema is newer than this build knows.
pub(super) fn migrate(connection: &mut Connection) -> Result<(), StoreError> {
    connection.execute_batch(
        "CREATE TABLE IF NOT EXISTS schema_migrations (
            version INTEGER PRIMARY KEY,
            applied_unix_millis INTEGER NOT NULL
        );",
    )?;
    let known = MIGRATIONS.last().map_or(0, |(version, _)| *version);
    for (version, sql) in MIGRATIONS {
        // IMMEDIATE: two hubs opening one database at once do not both run a step.
        let tx = connection.transaction_with_behavior(TransactionBehavior::Immediate)?;
        let current = schema_version(&tx)?;
        if current > known {
            return Err(StoreError::Invalid(format!(
                "database schema version {current} is newer than this hub supports ({known}); \
                 run a newer tollgate-hub or point it at another data folder"
            )));
        }
        if *version <= current {
            continue;
        }
        tx.execute_batch(sql)
            .map_err(|e| StoreError::backend(format!("migration {version} failed"), e))?;
        tx.execute(
            "INSERT INTO schema_migrations (version, applied_unix_millis) VALUES (?1, ?2)",
            params![version, tollgate_process::unix_millis()],
        )?;
        tx.commit()?;
    }
    Ok(())
}

/// The store's id, created with the store (the first open after migration 4).
fn ensure_store_id(connection: &Connection) -> Result<String, StoreError> {
    connection.execute(
        "INSERT OR IGNORE INTO store_meta (key, value) VALUES ('store_id', ?1)",
        [super::new_store_id()?],
    )?;
    Ok(
        connection.query_row("SELECT value FROM store_meta WHERE key = 'store_id'", [], |row| {
            row.get(0)
        })?,
    )
}

fn schema_version(tx: &Transaction<'_>) -> Result<u32, rusqlite::Error> {
    tx.query_row("SELECT COALESCE(MAX(version), 0) FROM schema_migrations", [], |row| {
        row.get(0)
    })
}

fn latest_number(tx: &Transaction<'_>) -> Result<u64, StoreError> {
    let number: i64 = tx.query_row("SELECT COALESCE(MAX(number), 0) FROM revisions", [], |row| row.get(0))?;
    u64::try_from(number).map_err(|_| StoreError::Invalid(format!("negative revision number {number}")))
}

/// The raw columns of a `revisions` row, decoded outside rusqlite's row callback.
struct RevisionRow {
    number: i64,
    created_unix_millis: i64,
    operation: String,
    summary: String,
    document_count: i64,
    author: String,
}

fn revision_row(row: &Row<'_>) -> Result<RevisionRow, rusqlite::Error> {
    Ok(RevisionRow {
        number: row.get(0)?,
        created_unix_millis: row.get(1)?,
        operation: row.get(2)?,
        summary: row.get(3)?,
        document_count: row.get(4)?,
        author: row.get(5)?,
    })
}

impl RevisionRow {
    fn decode(self) -> Result<RevisionInfo, StoreError> {
        let number = u64::try_from(self.number)
            .map_err(|_| StoreError::Invalid(format!("negative revision number {}", self.number)))?;
        let corrupt = |reason: String| StoreError::Corrupt {
            revision: number,
            reason,
        };
        Ok(RevisionInfo {
            number,
            created_unix_millis: self.created_unix_millis,
            operation: Operation::parse(&self.operation)
                .ok_or_else(|| corrupt(format!("unknown operation {:?}", self.operation)))?,
            summary: self.summary,
            document_count: u32::try_from(self.document_count)
                .map_err(|_| corrupt(format!("bad document count {}", self.document_count)))?,
            author: self.author,
        })
    }
}

/// Reads revision `number` (0 is the initial empty revision) and parses its documents.
fn read_revision(connection: &Connection, number: u64) -> Result<Revision, StoreError> {
    if number == 0 {
        return Ok(Revision::initial());
    }
    let key = to_sql_u64(number, "revision")?;
    let row = connection
        .query_row(
            &format!("SELECT {REVISION_COLUMNS}, documents_yaml FROM revisions WHERE number = ?1"),
            [key],
            |row| Ok((revision_row(row)?, row.get::<_, String>(6)?)),
        )
        .optional()?;
    let Some((row, yaml)) = row else {
        return Err(StoreError::NoSuchRevision(number));
    };
    super::decode_revision(row.decode()?, &yaml)
}

impl Store for SqliteStore {
    async fn latest(&self) -> Result<Revision, StoreError> {
        self.run(|connection| {
            // One read transaction: the number and the row it names come from one snapshot.
            let tx = connection.transaction()?;
            let number = latest_number(&tx)?;
            read_revision(&tx, number)
        })
        .await
    }

    async fn revision(&self, number: u64) -> Result<Revision, StoreError> {
        self.run(move |connection| read_revision(connection, number)).await
    }

    async fn latest_number(&self) -> Result<u64, StoreError> {
        self.run(|connection| latest_number(&connection.transaction()?)).await
    }

    async fn history(&self) -> Result<Vec<HistoryEntry>, StoreError> {
        self.run(|connection| {
            let mut statement = connection.prepare(&format!(
                "SELECT {REVISION_COLUMNS}, documents_yaml FROM revisions ORDER BY number"
            ))?;
            let rows = statement
                .query_map([], |row| Ok((revision_row(row)?, row.get::<_, String>(6)?)))?
                .collect::<Result<Vec<_>, _>>()?;
            Ok(rows
                .into_iter()
                .map(|(row, yaml)| {
                    let number = u64::try_from(row.number).unwrap_or(0);
                    super::history_entry(row.decode(), number, &yaml)
                })
                .collect())
        })
        .await
    }

    fn store_id(&self) -> &str {
        &self.inner.store_id
    }

    async fn ping(&self) -> Result<(), StoreError> {
        self.run(|connection| {
            Ok(connection
                .query_row("SELECT 1", [], |row| row.get::<_, i64>(0))
                .map(|_| ())?)
        })
        .await
    }

    async fn commit(
        &self,
        parent: u64,
        operation: Operation,
        summary: &str,
        author: &str,
        documents: &DocumentSet,
        now_unix_millis: i64,
    ) -> Result<RevisionInfo, StoreError> {
        let NewRevision {
            yaml,
            document_count,
            number,
            key,
        } = NewRevision::of(parent, documents)?;
        let summary = summary.to_string();
        let author = author.to_string();
        self.run(move |connection| {
            let tx = connection.transaction_with_behavior(TransactionBehavior::Immediate)?;
            let actual = latest_number(&tx)?;
            if actual != parent {
                return Err(StoreError::Conflict {
                    expected: parent,
                    actual,
                });
            }
            tx.execute(
                "INSERT INTO revisions (number, created_unix_millis, operation, summary, document_count, documents_yaml,
                                        author)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
                params![key, now_unix_millis, operation.as_str(), summary, document_count, yaml, author],
            )?;
            tx.commit()?;
            Ok(RevisionInfo {
                number,
                created_unix_millis: now_unix_millis,
                operation,
                summary,
                document_count,
                author,
            })
        })
        .await
    }

    async fn register_clusters(
        &self,
        ids: &[String],
        labels: &BTreeMap<String, String>,
        now_unix_millis: i64,
    ) -> Result<Vec<String>, StoreError> {
        let ids = ids.to_vec();
        let labels = to_json(labels)?;
        self.run(move |connection| {
            let tx = connection.transaction_with_behavior(TransactionBehavior::Immediate)?;
            let mut existing = Vec::new();
            {
                let mut exists = tx.prepare("SELECT 1 FROM clusters WHERE id = ?1")?;
                for id in &ids {
                    if exists.exists([id])? {
                        existing.push(id.clone());
                    }
                }
            }
            if !existing.is_empty() {
                return Ok(existing);
            }
            {
                let mut insert = tx.prepare(
                    "INSERT INTO clusters (id, labels_json, first_seen_unix_millis, last_seen_unix_millis,
                                           registered_unix_millis, refuse_certificates_before_unix_millis)
                     VALUES (?1, ?2, 0, 0, ?3,
                             COALESCE((SELECT removed_unix_millis FROM removed_clusters WHERE id = ?1), 0))",
                )?;
                for id in &ids {
                    insert.execute(params![id, labels, now_unix_millis])?;
                }
            }
            tx.commit()?;
            Ok(existing)
        })
        .await
    }

    async fn label_cluster(
        &self,
        id: &str,
        set: &BTreeMap<String, String>,
        remove: &[String],
    ) -> Result<Option<BTreeMap<String, String>>, StoreError> {
        let id = id.to_string();
        let (set, remove) = (set.clone(), remove.to_vec());
        self.run(move |connection| {
            let tx = connection.transaction_with_behavior(TransactionBehavior::Immediate)?;
            let Some(current) = tx
                .query_row("SELECT labels_json FROM clusters WHERE id = ?1", [&id], |row| {
                    row.get::<_, String>(0)
                })
                .optional()?
            else {
                return Ok(None);
            };
            let labels = super::relabelled(
                from_json(&current, &format!("labels of cluster {id:?}"))?,
                &set,
                &remove,
            );
            tx.execute(
                "UPDATE clusters SET labels_json = ?2 WHERE id = ?1",
                params![id, to_json(&labels)?],
            )?;
            tx.commit()?;
            Ok(Some(labels))
        })
        .await
    }

    async fn remove_cluster(&self, id: &str, now_unix_millis: i64) -> Result<bool, StoreError> {
        let id = id.to_string();
        self.run(move |connection| {
            let tx = connection.transaction_with_behavior(TransactionBehavior::Immediate)?;
            let removed = tx.execute("DELETE FROM clusters WHERE id = ?1", [&id])? > 0;
            if removed {
                tx.execute(
                    "INSERT INTO removed_clusters (id, removed_unix_millis) VALUES (?1, ?2)
                     ON CONFLICT (id) DO UPDATE SET removed_unix_millis = MAX(removed_unix_millis, excluded.removed_unix_millis)",
                    params![id, now_unix_millis],
                )?;
            }
            tx.commit()?;
            Ok(removed)
        })
        .await
    }

    async fn put_join_token(
        &self,
        id: &str,
        secret_sha256: &str,
        expires_unix_millis: i64,
    ) -> Result<bool, StoreError> {
        let (id, digest) = (id.to_string(), secret_sha256.to_string());
        self.run(move |connection| {
            let tx = connection.transaction_with_behavior(TransactionBehavior::Immediate)?;
            if !tx.prepare("SELECT 1 FROM clusters WHERE id = ?1")?.exists([&id])? {
                return Ok(false);
            }
            tx.execute(
                "INSERT INTO join_tokens (cluster_id, secret_sha256, expires_unix_millis) VALUES (?1, ?2, ?3)
                 ON CONFLICT (cluster_id) DO UPDATE SET
                     secret_sha256 = excluded.secret_sha256, expires_unix_millis = excluded.expires_unix_millis",
                params![id, digest, expires_unix_millis],
            )?;
            tx.commit()?;
            Ok(true)
        })
        .await
    }

    async fn take_join_token(
        &self,
        id: &str,
        secret_sha256: &str,
        now_unix_millis: i64,
    ) -> Result<TokenUse, StoreError> {
        let (id, digest) = (id.to_string(), secret_sha256.to_string());
        self.run(move |connection| {
            // A wrong secret (anyone may try one) reads without taking the write lock.
            let known = connection
                .prepare_cached("SELECT 1 FROM join_tokens WHERE cluster_id = ?1 AND secret_sha256 = ?2")?
                .exists(params![id, digest])?;
            if !known {
                return Ok(TokenUse::Unknown);
            }
            let tx = connection.transaction_with_behavior(TransactionBehavior::Immediate)?;
            let expires: Option<i64> = tx
                .query_row(
                    "SELECT expires_unix_millis FROM join_tokens WHERE cluster_id = ?1 AND secret_sha256 = ?2",
                    params![id, digest],
                    |row| row.get(0),
                )
                .optional()?;
            let Some(expires) = expires else {
                return Ok(TokenUse::Unknown);
            };
            tx.execute("DELETE FROM join_tokens WHERE cluster_id = ?1", [&id])?;
            tx.commit()?;
            Ok(if expires > now_unix_millis {
                TokenUse::Accepted
            } else {
                TokenUse::Expired
            })
        })
        .await
    }

    async fn registrations(&self) -> Result<Vec<Registration>, StoreError> {
        self.run(|connection| {
            let mut statement = connection.prepare(
                "SELECT id, labels_json, refuse_certificates_before_unix_millis, adopt_requested FROM clusters \
                 ORDER BY id",
            )?;
            let rows = statement
                .query_map([], |row| {
                    Ok((
                        row.get::<_, String>(0)?,
                        row.get::<_, String>(1)?,
                        row.get::<_, i64>(2)?,
                        row.get::<_, bool>(3)?,
                    ))
                })?
                .collect::<Result<Vec<_>, _>>()?;
            rows.into_iter()
                .map(|(id, labels, refuse, adopt)| {
                    Ok(Registration {
                        labels: from_json(&labels, &format!("labels of cluster {id:?}"))?,
                        id,
                        refuse_certificates_before_unix_millis: refuse,
                        adopt_requested: adopt,
                    })
                })
                .collect()
        })
        .await
    }

    async fn hellos(&self, hellos: &[Hello], now_unix_millis: i64) -> Result<Vec<Option<Registration>>, StoreError> {
        let hellos: Vec<(String, String, i64)> = hellos
            .iter()
            .map(|h| Ok((h.id.clone(), to_json(&h.reported)?, h.certificate_not_after_unix_millis)))
            .collect::<Result<_, StoreError>>()?;
        self.run(move |connection| {
            let tx = connection.transaction_with_behavior(TransactionBehavior::Immediate)?;
            let mut rows = Vec::with_capacity(hellos.len());
            {
                let mut update = tx.prepare_cached(HELLO)?;
                for (id, reported, not_after) in &hellos {
                    let row = update
                        .query_row(params![id, reported, now_unix_millis, not_after], |row| {
                            Ok((row.get::<_, String>(0)?, row.get::<_, i64>(1)?, row.get::<_, bool>(2)?))
                        })
                        .optional()?;
                    rows.push((id, row));
                }
            }
            tx.commit()?;
            rows.into_iter()
                .map(|(id, row)| {
                    row.map(|(labels, refuse, adopt)| {
                        Ok(Registration {
                            labels: from_json(&labels, &format!("labels of cluster {id:?}"))?,
                            refuse_certificates_before_unix_millis: refuse,
                            adopt_requested: adopt,
                            id: id.clone(),
                        })
                    })
                    .transpose()
                })
                .collect()
        })
        .await
    }

    async fn record_reports(&self, reports: &[ClusterReport]) -> Result<Vec<String>, StoreError> {
        let reports = EncodedReport::all(reports)?;
        if reports.is_empty() {
            return Ok(Vec::new());
        }
        self.run(move |connection| {
            let tx = connection.transaction_with_behavior(TransactionBehavior::Immediate)?;
            let mut unknown = Vec::new();
            {
                let mut touch = tx.prepare(report_sql::TOUCH)?;
                let mut facts = tx.prepare(report_sql::FACTS)?;
                let mut applied = tx.prepare(report_sql::APPLIED)?;
                let mut conditions = tx.prepare(report_sql::CONDITIONS)?;
                let mut clear_agents = tx.prepare(report_sql::CLEAR_AGENTS)?;
                let mut insert_agent = tx.prepare(report_sql::INSERT_AGENT)?;
                for report in reports {
                    if touch.execute(params![report.id, report.last_seen])? == 0 {
                        unknown.push(report.id);
                        continue;
                    }
                    if let Some(json) = &report.facts_json {
                        facts.execute(params![report.id, json])?;
                    }
                    if let Some(revision) = report.applied {
                        applied.execute(params![report.id, revision])?;
                    }
                    if let Some(json) = &report.conditions {
                        conditions.execute(params![report.id, json])?;
                    }
                    if let Some(agents) = &report.inventory {
                        clear_agents.execute([&report.id])?;
                        for a in agents {
                            insert_agent.execute(params![
                                report.id,
                                a.namespace,
                                a.name,
                                a.labels,
                                a.verified,
                                a.reason,
                                a.mode,
                                a.rule_count,
                                a.sources,
                                a.applied,
                                a.errors,
                                a.dropped,
                                a.plan_inputs,
                                a.names,
                                a.widened_by
                            ])?;
                        }
                    }
                }
            }
            tx.commit()?;
            Ok(unknown)
        })
        .await
    }

    async fn request_adopt(&self, id: &str) -> Result<bool, StoreError> {
        let id = id.to_string();
        self.run(move |connection| {
            Ok(connection.execute("UPDATE clusters SET adopt_requested = 1 WHERE id = ?1", [&id])? > 0)
        })
        .await
    }

    async fn clear_adopt(&self, id: &str) -> Result<(), StoreError> {
        let id = id.to_string();
        self.run(move |connection| {
            connection.execute("UPDATE clusters SET adopt_requested = 0 WHERE id = ?1", [&id])?;
            Ok(())
        })
        .await
    }

    async fn adopt_requested(&self, id: &str) -> Result<bool, StoreError> {
        let id = id.to_string();
        self.run(move |connection| {
            Ok(connection
                .query_row("SELECT adopt_requested FROM clusters WHERE id = ?1", [&id], |row| {
                    row.get::<_, bool>(0)
                })
                .optional()?
                .unwrap_or(false))
        })
        .await
    }

    async fn record_connections(
        &self,
        replica: &str,
        clusters: &[String],
        now_unix_millis: i64,
    ) -> Result<(), StoreError> {
        if clusters.is_empty() {
            return Ok(());
        }
        let replica = replica.to_string();
        let clusters = clusters.to_vec();
        self.run(move |connection| {
            let tx = connection.transaction_with_behavior(TransactionBehavior::Immediate)?;
            {
                let mut update =
                    tx.prepare("UPDATE clusters SET connected_replica = ?2, last_seen_unix_millis = ?3 WHERE id = ?1")?;
                for id in &clusters {
                    update.execute(params![id, replica, now_unix_millis])?;
                }
            }
            tx.commit()?;
            Ok(())
        })
        .await
    }

    async fn record_disconnect(&self, id: &str, replica: &str, now_unix_millis: i64) -> Result<(), StoreError> {
        let id = id.to_string();
        let replica = replica.to_string();
        self.run(move |connection| {
            connection.execute(
                "UPDATE clusters SET
                     connected_replica = CASE WHEN connected_replica = ?2 THEN NULL ELSE connected_replica END,
                     last_seen_unix_millis = MAX(last_seen_unix_millis, ?3)
                 WHERE id = ?1",
                params![id, replica, now_unix_millis],
            )?;
            Ok(())
        })
        .await
    }

    async fn clusters(&self) -> Result<Vec<ClusterRecord>, StoreError> {
        self.run(|connection| {
            let mut statement = connection.prepare(&format!("SELECT {CLUSTER_COLUMNS} FROM clusters ORDER BY id"))?;
            let rows = statement
                .query_map([], |row| {
                    Ok(super::ClusterRow {
                        id: row.get(0)?,
                        labels_json: row.get(1)?,
                        first_seen_unix_millis: row.get(2)?,
                        last_seen_unix_millis: row.get(3)?,
                        facts_json: row.get(4)?,
                        applied_revision: row.get(5)?,
                        connected_replica: row.get(6)?,
                        conditions_json: row.get(7)?,
                        adopt_requested: row.get(8)?,
                        reported_labels_json: row.get(9)?,
                        registered_unix_millis: row.get(10)?,
                        refuse_certificates_before_unix_millis: row.get(11)?,
                        certificate_not_after_unix_millis: row.get(12)?,
                    })
                })?
                .collect::<Result<Vec<_>, _>>()?;
            rows.into_iter().map(super::ClusterRow::decode).collect()
        })
        .await
    }

    async fn agents(&self, cluster_id: &str) -> Result<Vec<AgentRecord>, StoreError> {
        let cluster_id = cluster_id.to_string();
        self.run(move |connection| {
            let mut statement = connection.prepare(&format!(
                "SELECT {AGENT_COLUMNS} FROM agents WHERE cluster_id = ?1 ORDER BY namespace, name"
            ))?;
            let rows = statement
                .query_map([&cluster_id], |row| {
                    Ok(EncodedAgent {
                        namespace: row.get(0)?,
                        name: row.get(1)?,
                        labels: row.get(2)?,
                        verified: row.get(3)?,
                        reason: row.get(4)?,
                        mode: row.get(5)?,
                        rule_count: row.get(6)?,
                        sources: row.get(7)?,
                        applied: row.get(8)?,
                        errors: row.get(9)?,
                        dropped: row.get(10)?,
                        plan_inputs: row.get(11)?,
                        names: row.get(12)?,
                        widened_by: row.get(13)?,
                    })
                })?
                .collect::<Result<Vec<_>, _>>()?;
            rows.into_iter().map(|row| row.decode(&cluster_id)).collect()
        })
        .await
    }
}
