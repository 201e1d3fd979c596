//! The shared store for several hub replicas: PostgreSQL, chosen with `--store postgres://…`.
//!
//! Same concepts as the embedded store ([`super::sqlite`]): the same tables and columns, ordered migrations
//! recorded in `schema_migrations` (a database written by a newer hub is refused), revisions holding the canonical
//! YAML of their whole set, re-validated when read. Differences that come from sharing one database:
//!
//! - **One global revision order.** A commit takes the transaction-scoped advisory lock [`COMMIT_LOCK`] before it
//!   reads the latest number, so commits from any replica serialise; the parent check then refuses a stale parent
//!   exactly as SQLite's `BEGIN IMMEDIATE` does, and the primary key on `number` is the last line of defence.
//! - **Push to the other replicas.** A commit runs `pg_notify('tollgate_revisions', number)` inside its
//!   transaction, so the notification is delivered if and only if the revision is committed.
//!   [`listen_for_revisions`] keeps one `LISTEN` connection per replica and wakes the hub, which re-reads the
//!   latest revision; after every (re)connection it wakes the hub once, so a notification missed while
//!   disconnected is caught up.
//! - Migrations run under the advisory lock [`MIGRATION_LOCK`], so replicas starting together apply each step once.
//! - Connections come from a small pool; every method is one transaction (or one statement).
//! - TLS: with `--store-ca FILE` every connection (pool and listener) is TLS, required and verified against that
//!   CA for the URL's host (rustls); without it the URL must not ask for TLS (`sslmode=require`), and connections
//!   are plaintext.

use std::collections::BTreeMap;
use std::fmt;
use std::path::Path;
use std::time::Duration;

use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod};
use futures::StreamExt;
use futures::stream::BoxStream;
use rustls::pki_types::pem::PemObject as _;
use tokio::sync::mpsc;
use tokio_postgres::config::SslMode;
use tokio_postgres::{AsyncMessage, NoTls, Row};
use tokio_postgres_rustls::MakeRustlsConnect;
use tollgate_common::document::DocumentSet;

use super::{
    AGENT_COLUMNS, AgentRecord, CLUSTER_COLUMNS, ClusterRecord, ClusterReport, EncodedAgent, EncodedReport, Hello,
    HistoryEntry, NewRevision, Operation, REVISION_COLUMNS, Registration, Revision, RevisionInfo, Store, StoreError,
    TokenUse, from_json, report_sql, to_json, to_sql_u64,
};

/// The channel commits notify on.
pub const CHANNEL: &str = "tollgate_revisions";
/// Advisory lock key held by every commit transaction (`'tollgate'` in ASCII, as a number).
pub const COMMIT_LOCK: i64 = 0x746f_6c6c_6761_7465;
/// Advisory lock key held while migrating.
pub const MIGRATION_LOCK: i64 = COMMIT_LOCK + 1;
/// Connections per replica.
const POOL_SIZE: usize = 16;
/// Connecting to the database, and waiting for a pooled connection.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// TCP keepalive probes start after this much idle time.
const KEEPALIVE_IDLE: Duration = Duration::from_secs(30);

/// The schema, as ordered steps `(version, SQL)`, mirroring the embedded store's steps. Append; never edit one that
/// has shipped.
pub const MIGRATIONS: &[(i32, &str)] = &[
    (
        1,
        "CREATE TABLE revisions (
        number BIGINT PRIMARY KEY CHECK (number > 0),
        created_unix_millis BIGINT NOT NULL,
        operation TEXT NOT NULL CHECK (operation IN ('apply', 'delete', 'rollback')),
        summary TEXT NOT NULL,
        document_count BIGINT NOT NULL,
        documents_yaml TEXT NOT NULL
    );
    CREATE TABLE clusters (
        id TEXT PRIMARY KEY,
        labels_json TEXT NOT NULL,
        first_seen_unix_millis BIGINT NOT NULL,
        last_seen_unix_millis BIGINT NOT NULL,
        facts_json TEXT,
        applied_revision BIGINT NOT NULL DEFAULT 0
    );
    CREATE TABLE agents (
        cluster_id TEXT NOT NULL REFERENCES clusters (id) ON DELETE CASCADE,
        namespace TEXT NOT NULL,
        name TEXT NOT NULL,
        labels_json TEXT NOT NULL,
        verified BOOLEAN NOT NULL,
        verification_reason TEXT NOT NULL,
        mode TEXT NOT NULL,
        rule_count BIGINT NOT NULL,
        rule_sources_json TEXT NOT NULL,
        applied_revision BIGINT NOT NULL,
        errors_json TEXT NOT NULL,
        dropped_json TEXT NOT NULL,
        PRIMARY KEY (cluster_id, namespace, name)
    );",
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
    ALTER TABLE clusters ADD COLUMN adopt_requested BOOLEAN NOT NULL DEFAULT FALSE;",
    ),
    (
        5,
        "ALTER TABLE agents ADD COLUMN names_json TEXT NOT NULL DEFAULT '[]';",
    ),
    (
        6,
        "ALTER TABLE agents ADD COLUMN widened_by_json TEXT NOT NULL DEFAULT '[]';",
    ),
    // As the embedded store's step 7: the cluster registry, removed ids, revision authors.
    (
        7,
        "ALTER TABLE clusters ADD COLUMN reported_labels_json TEXT NOT NULL DEFAULT '{}';
    ALTER TABLE clusters ADD COLUMN registered_unix_millis BIGINT NOT NULL DEFAULT 0;
    ALTER TABLE clusters ADD COLUMN refuse_certificates_before_unix_millis BIGINT NOT NULL DEFAULT 0;
    ALTER TABLE clusters ADD COLUMN certificate_not_after_unix_millis BIGINT NOT NULL DEFAULT 0;
    UPDATE clusters SET reported_labels_json = labels_json, registered_unix_millis = first_seen_unix_millis;
    CREATE TABLE removed_clusters (id TEXT PRIMARY KEY, removed_unix_millis BIGINT NOT NULL);
    ALTER TABLE revisions ADD COLUMN author TEXT NOT NULL DEFAULT '';",
    ),
    // Join tokens: the SHA-256 of each secret, one per registered cluster, gone with the cluster.
    (
        8,
        "CREATE TABLE join_tokens (
        cluster_id TEXT PRIMARY KEY REFERENCES clusters (id) ON DELETE CASCADE,
        secret_sha256 TEXT NOT NULL,
        expires_unix_millis BIGINT NOT NULL
    );",
    ),
    // As the embedded store's step 9: plan inputs as their protobuf encoding.
    (
        9,
        "ALTER TABLE agents DROP COLUMN plan_inputs_json;
    ALTER TABLE agents ADD COLUMN plan_inputs BYTEA;",
    ),
];

/// The PostgreSQL store. Cheap to clone: clones share one pool.
#[derive(Clone)]
pub struct PgStore {
    pool: Pool,
    /// The database's store id, shared by every replica.
    store_id: String,
    /// The URL without its password, for messages.
    display: String,
}

impl fmt::Debug for PgStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PgStore").field("database", &self.display).finish()
    }
}

/// A database error with PostgreSQL's own message (the driver's `Display` alone says only "db error").
fn pg(error: tokio_postgres::Error) -> StoreError {
    let context = match error.as_db_error() {
        Some(db) => format!("postgres: {}: {}", db.code().code(), db.message()),
        // The causes carry the useful part ("invalid peer certificate: UnknownIssuer", "Connection refused").
        None => "postgres".to_string(),
    };
    StoreError::backend(context, error)
}

fn pool_error(error: deadpool_postgres::PoolError) -> StoreError {
    match error {
        deadpool_postgres::PoolError::Backend(error) => pg(error),
        other => StoreError::backend("postgres pool", other),
    }
}

/// The URL with every password replaced by `***`: in the user info (`postgres://user:secret@host/db`) and in a
/// `password=` option (`?password=secret`, or a key/value string).
pub fn redact(url: &str) -> String {
    let mut out = url.to_string();
    if let Some((scheme, rest)) = url.split_once("://")
        && let Some((credentials, host)) = rest.split_once('@')
        && let Some((user, _)) = credentials.split_once(':')
    {
        out = format!("{scheme}://{user}:***@{host}");
    }
    let mut from = 0;
    while let Some(found) = out[from..].find("password=") {
        let start = from + found + "password=".len();
        let end = out[start..]
            .find(|c: char| c == '&' || c.is_whitespace())
            .map_or(out.len(), |e| start + e);
        out.replace_range(start..end, "***");
        from = start + 3;
    }
    out
}

/// How connections to the database are made.
#[derive(Clone)]
pub enum Connector {
    Plain,
    /// TLS verified against a CA.
    Tls(MakeRustlsConnect),
}

impl fmt::Debug for Connector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Plain => "Plain",
            Self::Tls(_) => "Tls",
        })
    }
}

/// Parses `url` and decides how to connect: `ca` (PEM, the CA that signed the server's certificate) turns TLS on,
/// required and verified; `sslmode=require` without a CA and `sslmode=disable` with one are refused.
pub fn connection(url: &str, ca: Option<&Path>) -> Result<(tokio_postgres::Config, Connector), StoreError> {
    let shown = redact(url);
    let mut config: tokio_postgres::Config = url
        .parse()
        .map_err(|e| StoreError::backend(format!("--store {shown}"), e))?;
    // An unreachable database fails calls in seconds, and a connection cut off silently (a NAT or load balancer
    // dropping idle flows) is noticed, instead of hanging for the kernel's defaults.
    if config.get_connect_timeout().is_none() {
        config.connect_timeout(CONNECT_TIMEOUT);
    }
    config.keepalives(true).keepalives_idle(KEEPALIVE_IDLE);
    match (ca, config.get_ssl_mode()) {
        (None, SslMode::Require) => Err(StoreError::Invalid(format!(
            "--store {shown}: sslmode=require needs --store-ca FILE, the CA that signed the database server's certificate"
        ))),
        (None, _) => Ok((config, Connector::Plain)),
        (Some(_), SslMode::Disable) => Err(StoreError::Invalid(format!(
            "--store {shown}: sslmode=disable contradicts --store-ca (which turns TLS on)"
        ))),
        (Some(ca), _) => {
            let pem = std::fs::read(ca).map_err(|e| StoreError::backend(format!("--store-ca {}", ca.display()), e))?;
            let mut roots = rustls::RootCertStore::empty();
            for cert in rustls::pki_types::CertificateDer::pem_slice_iter(&pem) {
                let cert = cert.map_err(|e| StoreError::backend(format!("--store-ca {}", ca.display()), e))?;
                roots
                    .add(cert)
                    .map_err(|e| StoreError::backend(format!("--store-ca {}", ca.display()), e))?;
            }
            if roots.is_empty() {
                return Err(StoreError::Invalid(format!(
                    "--store-ca {}: no PEM certificate in the file",
                    ca.display()
                )));
            }
            let tls = rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(
                rustls::crypto::ring::default_provider(),
            ))
            .with_safe_default_protocol_versions()
            .map_err(|e| StoreError::backend("TLS", e))?
            .with_root_certificates(roots)
            .with_no_client_auth();
            config.ssl_mode(SslMode::Require);
            Ok((config, Connector::Tls(MakeRustlsConnect::new(tls))))
        }
    }
}

/// The messages of a connection (notifications among them), whatever its transport.
type Messages = BoxStream<'static, Result<AsyncMessage, tokio_postgres::Error>>;

/// One connection outside the pool, for `LISTEN`.
async fn connect_one(
    config: &tokio_postgres::Config,
    connector: &Connector,
) -> Result<(tokio_postgres::Client, Messages), tokio_postgres::Error> {
    fn messages<S, T>(mut connection: tokio_postgres::Connection<S, T>) -> Messages
    where
        S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
        T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    {
        futures::stream::poll_fn(move |cx| connection.poll_message(cx)).boxed()
    }
    Ok(match connector {
        Connector::Plain => {
            let (client, connection) = config.connect(NoTls).await?;
            (client, messages(connection))
        }
        Connector::Tls(tls) => {
            let (client, connection) = config.connect(tls.clone()).await?;
            (client, messages(connection))
        }
    })
}

impl PgStore {
    /// Connects to `url` (`postgres://user[:password]@host[:port]/database[?options]`) and applies the missing
    /// migrations; see [`connection`] for `ca`.
    pub async fn connect(url: &str, ca: Option<&Path>) -> Result<Self, StoreError> {
        let display = redact(url);
        let (config, connector) = connection(url, ca)?;
        let manager_config = ManagerConfig {
            recycling_method: RecyclingMethod::Fast,
        };
        let manager = match connector {
            Connector::Plain => Manager::from_config(config, NoTls, manager_config),
            Connector::Tls(tls) => Manager::from_config(config, tls, manager_config),
        };
        let pool = Pool::builder(manager)
            .max_size(POOL_SIZE)
            .wait_timeout(Some(CONNECT_TIMEOUT))
            .create_timeout(Some(CONNECT_TIMEOUT))
            .runtime(deadpool_postgres::Runtime::Tokio1)
            .build()
            .map_err(|e| StoreError::backend(&display, e))?;
        let mut store = Self {
            pool,
            display,
            store_id: String::new(),
        };
        let in_database = |e: StoreError| e.within(redact(url));
        store.migrate().await.map_err(in_database)?;
        store.store_id = store.ensure_store_id().await.map_err(in_database)?;
        Ok(store)
    }

    /// The store's id, created with the database; replicas starting together agree on one.
    async fn ensure_store_id(&self) -> Result<String, StoreError> {
        let client = self.client().await?;
        client
            .execute(
                "INSERT INTO store_meta (key, value) VALUES ('store_id', $1) ON CONFLICT (key) DO NOTHING",
                &[&super::new_store_id()?],
            )
            .await
            .map_err(pg)?;
        Ok(client
            .query_one("SELECT value FROM store_meta WHERE key = 'store_id'", &[])
            .await
            .map_err(pg)?
            .get(0))
    }

    async fn client(&self) -> Result<deadpool_postgres::Object, StoreError> {
        self.pool.get().await.map_err(pool_error)
    }

    async fn migrate(&self) -> Result<(), StoreError> {
        let mut client = self.client().await?;
        let tx = client.transaction().await.map_err(pg)?;
        tx.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK])
            .await
            .map_err(pg)?;
        tx.batch_execute(
            "CREATE TABLE IF NOT EXISTS schema_migrations (
                version INTEGER PRIMARY KEY,
                applied_unix_millis BIGINT NOT NULL
            );",
        )
        .await
        .map_err(pg)?;
        let current: i32 = tx
            .query_one("SELECT COALESCE(MAX(version), 0) FROM schema_migrations", &[])
            .await
            .map_err(pg)?
            .get(0);
        let known = MIGRATIONS.last().map_or(0, |(version, _)| *version);
        if current > known {
            return Err(StoreError::Invalid(format!(
                "database schema version {current} is newer than this hub supports ({known}); run a newer tollgate-hub"
            )));
        }
        for (version, sql) in MIGRATIONS.iter().filter(|(v, _)| *v > current) {
            tx.batch_execute(sql)
                .await
                .map_err(|e| pg(e).within(format_args!("migration {version} failed")))?;
            tx.execute(
                "INSERT INTO schema_migrations (version, applied_unix_millis) VALUES ($1, $2)",
                &[version, &tollgate_process::unix_millis()],
            )
            .await
            .map_err(pg)?;
        }
        tx.commit().await.map_err(pg)
    }
}

/// A statement of [`report_sql`] with PostgreSQL's placeholders.
fn numbered(sql: &str) -> String {
    sql.replace('?', "$")
}

fn from_sql_u64(value: i64, what: &str) -> Result<u64, StoreError> {
    u64::try_from(value).map_err(|_| StoreError::Invalid(format!("negative {what} {value}")))
}

fn revision_info(row: &Row) -> Result<RevisionInfo, StoreError> {
    let number = from_sql_u64(row.get(0), "revision number")?;
    let corrupt = |reason: String| StoreError::Corrupt {
        revision: number,
        reason,
    };
    let operation: String = row.get(2);
    let count: i64 = row.get(4);
    Ok(RevisionInfo {
        number,
        created_unix_millis: row.get(1),
        operation: Operation::parse(&operation).ok_or_else(|| corrupt(format!("unknown operation {operation:?}")))?,
        summary: row.get(3),
        document_count: u32::try_from(count).map_err(|_| corrupt(format!("bad document count {count}")))?,
        author: row.get(5),
    })
}

async fn read_revision(client: &impl deadpool_postgres::GenericClient, number: u64) -> Result<Revision, StoreError> {
    if number == 0 {
        return Ok(Revision::initial());
    }
    let key = to_sql_u64(number, "revision")?;
    let row = client
        .query_opt(
            &format!("SELECT {REVISION_COLUMNS}, documents_yaml FROM revisions WHERE number = $1"),
            &[&key],
        )
        .await
        .map_err(pg)?
        .ok_or(StoreError::NoSuchRevision(number))?;
    let info = revision_info(&row)?;
    let yaml: String = row.get(6);
    super::decode_revision(info, &yaml)
}

async fn latest_number(client: &impl deadpool_postgres::GenericClient) -> Result<u64, StoreError> {
    let number: i64 = client
        .query_one("SELECT COALESCE(MAX(number), 0) FROM revisions", &[])
        .await
        .map_err(pg)?
        .get(0);
    from_sql_u64(number, "revision number")
}

impl Store for PgStore {
    async fn latest(&self) -> Result<Revision, StoreError> {
        let mut client = self.client().await?;
        // One snapshot for the number and the row it names.
        let tx = client
            .build_transaction()
            .isolation_level(tokio_postgres::IsolationLevel::RepeatableRead)
            .read_only(true)
            .start()
            .await
            .map_err(pg)?;
        let number = latest_number(&tx).await?;
        let revision = read_revision(&tx, number).await?;
        tx.commit().await.map_err(pg)?;
        Ok(revision)
    }

    async fn revision(&self, number: u64) -> Result<Revision, StoreError> {
        read_revision(&self.client().await?, number).await
    }

    async fn latest_number(&self) -> Result<u64, StoreError> {
        latest_number(&self.client().await?).await
    }

    async fn history(&self) -> Result<Vec<HistoryEntry>, StoreError> {
        let client = self.client().await?;
        let rows = client
            .query(
                &format!("SELECT {REVISION_COLUMNS}, documents_yaml FROM revisions ORDER BY number"),
                &[],
            )
            .await
            .map_err(pg)?;
        Ok(rows
            .iter()
            .map(|row| {
                let number = u64::try_from(row.get::<_, i64>(0)).unwrap_or(0);
                super::history_entry(revision_info(row), number, row.get(6))
            })
            .collect())
    }

    fn store_id(&self) -> &str {
        &self.store_id
    }

    async fn ping(&self) -> Result<(), StoreError> {
        self.client().await?.query_one("SELECT 1", &[]).await.map_err(pg)?;
        Ok(())
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
        let mut client = self.client().await?;
        let tx = client.transaction().await.map_err(pg)?;
        tx.execute("SELECT pg_advisory_xact_lock($1)", &[&COMMIT_LOCK])
            .await
            .map_err(pg)?;
        let actual = latest_number(&tx).await?;
        if actual != parent {
            return Err(StoreError::Conflict {
                expected: parent,
                actual,
            });
        }
        tx.execute(
            "INSERT INTO revisions (number, created_unix_millis, operation, summary, document_count, documents_yaml,
                                    author)
             VALUES ($1, $2, $3, $4, $5, $6, $7)",
            &[
                &key,
                &now_unix_millis,
                &operation.as_str(),
                &summary,
                &i64::from(document_count),
                &yaml,
                &author,
            ],
        )
        .await
        .map_err(pg)?;
        tx.execute("SELECT pg_notify($1, $2)", &[&CHANNEL, &number.to_string()])
            .await
            .map_err(pg)?;
        tx.commit().await.map_err(pg)?;
        Ok(RevisionInfo {
            number,
            created_unix_millis: now_unix_millis,
            operation,
            summary: summary.to_string(),
            document_count,
            author: author.to_string(),
        })
    }

    async fn register_clusters(
        &self,
        ids: &[String],
        labels: &BTreeMap<String, String>,
        now_unix_millis: i64,
    ) -> Result<Vec<String>, StoreError> {
        let labels = to_json(labels)?;
        let mut client = self.client().await?;
        let tx = client.transaction().await.map_err(pg)?;
        let existing: Vec<String> = tx
            .query("SELECT id FROM clusters WHERE id = ANY($1) ORDER BY id", &[&ids])
            .await
            .map_err(pg)?
            .iter()
            .map(|row| row.get(0))
            .collect();
        if !existing.is_empty() {
            return Ok(existing);
        }
        // One statement for the whole batch; a concurrent registration of one of the ids fails it on the key.
        tx.execute(
            "INSERT INTO clusters (id, labels_json, first_seen_unix_millis, last_seen_unix_millis,
                                   registered_unix_millis, refuse_certificates_before_unix_millis)
             SELECT new.id, $2, 0, 0, $3, COALESCE(removed.removed_unix_millis, 0)
             FROM UNNEST($1::TEXT[]) AS new (id)
             LEFT JOIN removed_clusters AS removed ON removed.id = new.id",
            &[&ids, &labels, &now_unix_millis],
        )
        .await
        .map_err(pg)?;
        tx.commit().await.map_err(pg)?;
        Ok(existing)
    }

    async fn label_cluster(
        &self,
        id: &str,
        set: &BTreeMap<String, String>,
        remove: &[String],
    ) -> Result<Option<BTreeMap<String, String>>, StoreError> {
        let mut client = self.client().await?;
        let tx = client.transaction().await.map_err(pg)?;
        let Some(row) = tx
            .query_opt("SELECT labels_json FROM clusters WHERE id = $1 FOR UPDATE", &[&id])
            .await
            .map_err(pg)?
        else {
            return Ok(None);
        };
        let current: String = row.get(0);
        let labels = super::relabelled(from_json(&current, &format!("labels of cluster {id:?}"))?, set, remove);
        tx.execute(
            "UPDATE clusters SET labels_json = $2 WHERE id = $1",
            &[&id, &to_json(&labels)?],
        )
        .await
        .map_err(pg)?;
        tx.commit().await.map_err(pg)?;
        Ok(Some(labels))
    }

    async fn remove_cluster(&self, id: &str, now_unix_millis: i64) -> Result<bool, StoreError> {
        let mut client = self.client().await?;
        let tx = client.transaction().await.map_err(pg)?;
        let removed = tx
            .execute("DELETE FROM clusters WHERE id = $1", &[&id])
            .await
            .map_err(pg)?
            > 0;
        if removed {
            tx.execute(
                "INSERT INTO removed_clusters (id, removed_unix_millis) VALUES ($1, $2)
                 ON CONFLICT (id) DO UPDATE SET
                     removed_unix_millis = GREATEST(removed_clusters.removed_unix_millis, excluded.removed_unix_millis)",
                &[&id, &now_unix_millis],
            )
            .await
            .map_err(pg)?;
        }
        tx.commit().await.map_err(pg)?;
        Ok(removed)
    }

    async fn put_join_token(
        &self,
        id: &str,
        secret_sha256: &str,
        expires_unix_millis: i64,
    ) -> Result<bool, StoreError> {
        // The foreign key refuses a token of an unregistered cluster; one statement, so no race with a removal.
        let stored = self
            .client()
            .await?
            .execute(
                "INSERT INTO join_tokens (cluster_id, secret_sha256, expires_unix_millis)
                 SELECT id, $2, $3 FROM clusters WHERE id = $1
                 ON CONFLICT (cluster_id) DO UPDATE SET
                     secret_sha256 = excluded.secret_sha256, expires_unix_millis = excluded.expires_unix_millis",
                &[&id, &secret_sha256, &expires_unix_millis],
            )
            .await
            .map_err(pg)?;
        Ok(stored > 0)
    }

    async fn take_join_token(
        &self,
        id: &str,
        secret_sha256: &str,
        now_unix_millis: i64,
    ) -> Result<TokenUse, StoreError> {
        // Deleted and returned in one statement: two spokes presenting one token cannot both get it.
        let row = self
            .client()
            .await?
            .query_opt(
                "DELETE FROM join_tokens WHERE cluster_id = $1 AND secret_sha256 = $2 RETURNING expires_unix_millis",
                &[&id, &secret_sha256],
            )
            .await
            .map_err(pg)?;
        Ok(match row {
            None => TokenUse::Unknown,
            Some(row) if row.get::<_, i64>(0) > now_unix_millis => TokenUse::Accepted,
            Some(_) => TokenUse::Expired,
        })
    }

    async fn registrations(&self) -> Result<Vec<Registration>, StoreError> {
        let rows = self
            .client()
            .await?
            .query(
                "SELECT id, labels_json, refuse_certificates_before_unix_millis, adopt_requested FROM clusters \
                 ORDER BY id",
                &[],
            )
            .await
            .map_err(pg)?;
        rows.iter()
            .map(|row| {
                let id: String = row.get(0);
                let labels: String = row.get(1);
                Ok(Registration {
                    labels: from_json(&labels, &format!("labels of cluster {id:?}"))?,
                    refuse_certificates_before_unix_millis: row.get(2),
                    adopt_requested: row.get(3),
                    id,
                })
            })
            .collect()
    }

    async fn hellos(&self, hellos: &[Hello], now_unix_millis: i64) -> Result<Vec<Option<Registration>>, StoreError> {
        let mut client = self.client().await?;
        let tx = client.transaction().await.map_err(pg)?;
        let update = tx
            .prepare(
                "UPDATE clusters SET
                     reported_labels_json = $2,
                     certificate_not_after_unix_millis = $4,
                     first_seen_unix_millis = CASE WHEN first_seen_unix_millis = 0 THEN $3
                                                   ELSE first_seen_unix_millis END,
                     last_seen_unix_millis = GREATEST(last_seen_unix_millis, $3)
                 WHERE id = $1
                 RETURNING labels_json, refuse_certificates_before_unix_millis, adopt_requested",
            )
            .await
            .map_err(pg)?;
        let mut registrations = Vec::with_capacity(hellos.len());
        for hello in hellos {
            let reported = to_json(&hello.reported)?;
            let row = tx
                .query_opt(
                    &update,
                    &[
                        &hello.id,
                        &reported,
                        &now_unix_millis,
                        &hello.certificate_not_after_unix_millis,
                    ],
                )
                .await
                .map_err(pg)?;
            registrations.push(
                row.map(|row| {
                    let labels: String = row.get(0);
                    Ok::<_, StoreError>(Registration {
                        id: hello.id.clone(),
                        labels: from_json(&labels, &format!("labels of cluster {:?}", hello.id))?,
                        refuse_certificates_before_unix_millis: row.get(1),
                        adopt_requested: row.get(2),
                    })
                })
                .transpose()?,
            );
        }
        tx.commit().await.map_err(pg)?;
        Ok(registrations)
    }

    async fn record_reports(&self, reports: &[ClusterReport]) -> Result<Vec<String>, StoreError> {
        let reports = EncodedReport::all(reports)?;
        if reports.is_empty() {
            return Ok(Vec::new());
        }
        let mut client = self.client().await?;
        let tx = client.transaction().await.map_err(pg)?;
        let prepare = |sql: &'static str| {
            let tx = &tx;
            async move { tx.prepare(&numbered(sql)).await.map_err(pg) }
        };
        let touch = prepare(report_sql::TOUCH).await?;
        let facts = prepare(report_sql::FACTS).await?;
        let applied = prepare(report_sql::APPLIED).await?;
        let conditions = prepare(report_sql::CONDITIONS).await?;
        let clear_agents = prepare(report_sql::CLEAR_AGENTS).await?;
        let insert_agent = prepare(report_sql::INSERT_AGENT).await?;
        let mut unknown = Vec::new();
        for report in reports {
            if tx.execute(&touch, &[&report.id, &report.last_seen]).await.map_err(pg)? == 0 {
                unknown.push(report.id);
                continue;
            }
            if let Some(json) = &report.facts_json {
                tx.execute(&facts, &[&report.id, json]).await.map_err(pg)?;
            }
            if let Some(revision) = &report.applied {
                tx.execute(&applied, &[&report.id, revision]).await.map_err(pg)?;
            }
            if let Some(json) = &report.conditions {
                tx.execute(&conditions, &[&report.id, json]).await.map_err(pg)?;
            }
            if let Some(agents) = &report.inventory {
                tx.execute(&clear_agents, &[&report.id]).await.map_err(pg)?;
                for a in agents {
                    tx.execute(
                        &insert_agent,
                        &[
                            &report.id,
                            &a.namespace,
                            &a.name,
                            &a.labels,
                            &a.verified,
                            &a.reason,
                            &a.mode,
                            &i64::from(a.rule_count),
                            &a.sources,
                            &a.applied,
                            &a.errors,
                            &a.dropped,
                            &a.plan_inputs,
                            &a.names,
                            &a.widened_by,
                        ],
                    )
                    .await
                    .map_err(pg)?;
                }
            }
        }
        tx.commit().await.map_err(pg)?;
        Ok(unknown)
    }

    async fn request_adopt(&self, id: &str) -> Result<bool, StoreError> {
        let client = self.client().await?;
        let updated = client
            .execute("UPDATE clusters SET adopt_requested = TRUE WHERE id = $1", &[&id])
            .await
            .map_err(pg)?;
        Ok(updated > 0)
    }

    async fn clear_adopt(&self, id: &str) -> Result<(), StoreError> {
        let client = self.client().await?;
        client
            .execute("UPDATE clusters SET adopt_requested = FALSE WHERE id = $1", &[&id])
            .await
            .map_err(pg)?;
        Ok(())
    }

    async fn adopt_requested(&self, id: &str) -> Result<bool, StoreError> {
        let client = self.client().await?;
        let row = client
            .query_opt("SELECT adopt_requested FROM clusters WHERE id = $1", &[&id])
            .await
            .map_err(pg)?;
        Ok(row.is_some_and(|row| row.get(0)))
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
        let client = self.client().await?;
        client
            .execute(
                "UPDATE clusters SET connected_replica = $1, last_seen_unix_millis = $2 WHERE id = ANY($3)",
                &[&replica, &now_unix_millis, &clusters],
            )
            .await
            .map_err(pg)?;
        Ok(())
    }

    async fn record_disconnect(&self, id: &str, replica: &str, now_unix_millis: i64) -> Result<(), StoreError> {
        let client = self.client().await?;
        client
            .execute(
                "UPDATE clusters SET
                     connected_replica = CASE WHEN connected_replica = $2 THEN NULL ELSE connected_replica END,
                     last_seen_unix_millis = GREATEST(last_seen_unix_millis, $3)
                 WHERE id = $1",
                &[&id, &replica, &now_unix_millis],
            )
            .await
            .map_err(pg)?;
        Ok(())
    }

    async fn clusters(&self) -> Result<Vec<ClusterRecord>, StoreError> {
        let client = self.client().await?;
        let rows = client
            .query(&format!("SELECT {CLUSTER_COLUMNS} FROM clusters ORDER BY id"), &[])
            .await
            .map_err(pg)?;
        rows.iter()
            .map(|row| {
                super::ClusterRow {
                    id: row.get(0),
                    labels_json: row.get(1),
                    first_seen_unix_millis: row.get(2),
                    last_seen_unix_millis: row.get(3),
                    facts_json: row.get(4),
                    applied_revision: row.get(5),
                    connected_replica: row.get(6),
                    conditions_json: row.get(7),
                    adopt_requested: row.get(8),
                    reported_labels_json: row.get(9),
                    registered_unix_millis: row.get(10),
                    refuse_certificates_before_unix_millis: row.get(11),
                    certificate_not_after_unix_millis: row.get(12),
                }
                .decode()
            })
            .collect()
    }

    async fn agents(&self, cluster_id: &str) -> Result<Vec<AgentRecord>, StoreError> {
        let client = self.client().await?;
        let rows = client
            .query(
                &format!("SELECT {AGENT_COLUMNS} FROM agents WHERE cluster_id = $1 ORDER BY namespace, name"),
                &[&cluster_id],
            )
            .await
            .map_err(pg)?;
        rows.iter()
            .map(|row| {
                let rule_count: i64 = row.get(6);
                EncodedAgent {
                    namespace: row.get(0),
                    name: row.get(1),
                    labels: row.get(2),
                    verified: row.get(3),
                    reason: row.get(4),
                    mode: row.get(5),
                    rule_count: u32::try_from(rule_count).unwrap_or(u32::MAX),
                    sources: row.get(7),
                    applied: row.get(8),
                    errors: row.get(9),
                    dropped: row.get(10),
                    plan_inputs: row.get(11),
                    names: row.get(12),
                    widened_by: row.get(13),
                }
                .decode(cluster_id)
            })
            .collect()
    }
}

/// Keeps one `LISTEN tollgate_revisions` connection to `url` (see [`connection`] for `ca`) and sends `()` on
/// `wake` for every notification, and once after every (re)connection (a commit may have been missed while
/// disconnected). Reconnects with capped backoff; returns when `wake` is closed.
pub async fn listen_for_revisions(url: String, ca: Option<std::path::PathBuf>, wake: mpsc::UnboundedSender<()>) {
    let database = redact(&url);
    let (config, connector) = match connection(&url, ca.as_deref()) {
        Ok(parsed) => parsed,
        Err(error) => {
            tracing::error!(error = %tollgate_process::error_chain(&error), "The revision listener cannot start");
            return;
        }
    };
    let mut delay = Duration::from_millis(100);
    loop {
        match connect_one(&config, &connector).await {
            Ok((client, mut messages)) => {
                let forward = wake.clone();
                let messages = tokio::spawn(async move {
                    while let Some(message) = messages.next().await {
                        match message {
                            Ok(AsyncMessage::Notification(_)) => {
                                if forward.send(()).is_err() {
                                    return;
                                }
                            }
                            Ok(_) => {}
                            Err(error) => {
                                tracing::warn!(error = %tollgate_process::error_chain(&error), "The revision listener's connection failed");
                                return;
                            }
                        }
                    }
                });
                match client.batch_execute(&format!("LISTEN {CHANNEL}")).await {
                    Ok(()) => {
                        tracing::info!(%database, "Listening for revisions committed by other replicas");
                        delay = Duration::from_millis(100);
                        if wake.send(()).is_err() {
                            return;
                        }
                        let _ = messages.await;
                    }
                    Err(error) => {
                        tracing::warn!(error = %pg(error), "LISTEN failed");
                        messages.abort();
                    }
                }
                drop(client);
            }
            Err(error) => tracing::warn!(%database, error = %pg(error), "Cannot connect the revision listener"),
        }
        if wake.is_closed() {
            return;
        }
        tokio::time::sleep(delay).await;
        delay = (delay * 2).min(Duration::from_secs(5));
    }
}

#[cfg(test)]
mod unit_tests {
    use super::*;

    #[test]
    fn passwords_are_redacted() {
        assert_eq!(
            redact("postgres://hub:s3cret@db:5432/tollgate"),
            "postgres://hub:***@db:5432/tollgate"
        );
        assert_eq!(redact("postgres://hub@db/tollgate"), "postgres://hub@db/tollgate");
        assert_eq!(redact("host=db user=hub"), "host=db user=hub");
        assert_eq!(
            redact("postgres://hub@db/tollgate?password=s3cret&sslmode=require"),
            "postgres://hub@db/tollgate?password=***&sslmode=require"
        );
        assert_eq!(
            redact("host=db password=s3cret user=hub"),
            "host=db password=*** user=hub"
        );
        assert_eq!(
            redact("postgres://hub:a@db/x?password=b"),
            "postgres://hub:***@db/x?password=***"
        );
    }

    #[test]
    fn migrations_are_ordered_from_one() {
        for (i, (version, _)) in MIGRATIONS.iter().enumerate() {
            assert_eq!(*version, i as i32 + 1);
        }
    }
}
