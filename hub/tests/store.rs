//! Tests of the store on both backends (the embedded SQLite file and a real PostgreSQL server): revisions, history,
//! rollback exactness, conflicts, concurrent commits, fleet status, migrations, corruption, and durability across a
//! real SIGKILL.

use std::collections::BTreeMap;
use std::path::Path;

use tollgate_common::document::{Document, DocumentSet};

use tollgate_common::planner::Mode;
use tollgate_common::verification::Reason;
use tollgate_hub::server::store::sqlite::{DATABASE_FILE, MIGRATIONS};
use tollgate_hub::server::store::*;
use tollgate_proto::v1 as pb;

/// Runs each named `async fn NAME(backend: Backend)` once per backend: `sqlite::NAME` and `postgres::NAME`.
macro_rules! on_both_backends {
    ($($name:ident),* $(,)?) => {
        mod on_sqlite {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
                async fn $name() {
                    super::$name(super::Backend::Sqlite).await;
                }
            )*
        }
        mod on_postgres {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
                async fn $name() {
                    super::$name(super::Backend::Postgres).await;
                }
            )*
        }
    };
}

on_both_backends!(
    empty_store_is_revision_zero_with_an_empty_set,
    revisions_are_monotonic_from_one_and_history_lists_them_in_order,
    every_revision_returns_exactly_its_set_and_rollback_is_byte_exact,
    a_stale_parent_conflicts_and_writes_nothing,
    concurrent_commits_serialise_without_lost_updates,
    clusters_inventory_and_applied_revision_round_trip_and_persist_across_reopen,
    the_registry_adds_labels_and_removes_clusters_and_remembers_removals,
    revisions_record_their_author,
    join_tokens_work_once_expire_and_go_with_their_cluster,
    inventory_replacement_removes_agents_not_listed,
    a_duplicate_agent_in_an_inventory_is_refused_and_changes_nothing,
    updates_of_an_unregistered_cluster_fail_and_create_nothing,
    connections_are_recorded_renewed_and_released_per_replica,
    unreadable_revisions_are_skipped_marked_and_rolled_back_past,
    the_store_id_is_created_once_and_shared_by_every_opener,
    reports_of_many_clusters_are_written_in_one_call,
    adoption_requests_are_set_read_and_cleared_per_cluster,
    hellos_of_many_clusters_are_one_call_with_one_answer_each,
);

/// The backend a test runs on.
#[derive(Clone, Copy, Debug)]
enum Backend {
    Sqlite,
    Postgres,
}

/// What keeps a test's store alive: its folder, or its PostgreSQL server (killed on drop) and database.
enum Fixture {
    Sqlite(tempfile::TempDir),
    Postgres(#[allow(dead_code)] tollgate_e2e::Postgres, String),
}

/// Either store, so one test body runs on both.
#[derive(Clone, Debug)]
enum AnyStore {
    Sqlite(SqliteStore),
    Postgres(PgStore),
}

/// A new empty store of the backend; PostgreSQL gets its own server and database.
async fn open(backend: Backend) -> (AnyStore, Fixture) {
    match backend {
        Backend::Sqlite => {
            let dir = tempfile::tempdir().unwrap();
            let store = SqliteStore::open(&dir.path().join("nested/data")).unwrap();
            assert!(store.path().ends_with("nested/data/tollgate-hub.db"));
            (AnyStore::Sqlite(store), Fixture::Sqlite(dir))
        }
        Backend::Postgres => {
            let server = tollgate_e2e::Postgres::start().await.unwrap();
            let url = server.create_database().await.unwrap();
            let store = PgStore::connect(&url, None).await.unwrap();
            (AnyStore::Postgres(store), Fixture::Postgres(server, url))
        }
    }
}

impl Fixture {
    /// The same database, opened again (a restarted hub).
    async fn reopen(&self) -> AnyStore {
        match self {
            Self::Sqlite(dir) => AnyStore::Sqlite(SqliteStore::open(&dir.path().join("nested/data")).unwrap()),
            Self::Postgres(_, url) => AnyStore::Postgres(PgStore::connect(url, None).await.unwrap()),
        }
    }

    /// Damages a stored revision behind the store's back (a bad restore, a hand edit, an older bug).
    async fn damage(&self, number: i64, yaml: &str) {
        match self {
            Self::Sqlite(dir) => {
                raw_connection(&dir.path().join("nested/data"))
                    .execute(
                        "UPDATE revisions SET documents_yaml = ?1 WHERE number = ?2",
                        rusqlite::params![yaml, number],
                    )
                    .unwrap();
            }
            Self::Postgres(_, url) => {
                let (client, connection) = tokio_postgres::connect(url, tokio_postgres::NoTls).await.unwrap();
                tokio::spawn(connection);
                client
                    .execute(
                        "UPDATE revisions SET documents_yaml = $1 WHERE number = $2",
                        &[&yaml, &number],
                    )
                    .await
                    .unwrap();
            }
        }
    }

    /// The `documents_yaml` column of a revision, read past the store.
    async fn stored_yaml(&self, number: i64) -> String {
        match self {
            Self::Sqlite(dir) => raw_connection(&dir.path().join("nested/data"))
                .query_row(
                    "SELECT documents_yaml FROM revisions WHERE number = ?1",
                    [number],
                    |row| row.get(0),
                )
                .unwrap(),
            Self::Postgres(_, url) => {
                let (client, connection) = tokio_postgres::connect(url, tokio_postgres::NoTls).await.unwrap();
                tokio::spawn(connection);
                client
                    .query_one("SELECT documents_yaml FROM revisions WHERE number = $1", &[&number])
                    .await
                    .unwrap()
                    .get(0)
            }
        }
    }
}

/// The history of a store whose revisions all read back, as records (asserts that every one is readable).
async fn readable_history(store: &AnyStore) -> Vec<RevisionInfo> {
    store
        .history()
        .await
        .unwrap()
        .into_iter()
        .map(|entry| {
            assert_eq!(entry.unreadable, None, "revision {} reads back", entry.info.number);
            entry.info
        })
        .collect()
}

/// Delegates every method to the wrapped store.
macro_rules! delegate {
    ($self:ident, $store:ident => $call:expr) => {
        match $self {
            AnyStore::Sqlite($store) => $call.await,
            AnyStore::Postgres($store) => $call.await,
        }
    };
}

impl Store for AnyStore {
    async fn latest(&self) -> Result<Revision, StoreError> {
        delegate!(self, s => s.latest())
    }
    async fn revision(&self, number: u64) -> Result<Revision, StoreError> {
        delegate!(self, s => s.revision(number))
    }
    async fn latest_number(&self) -> Result<u64, StoreError> {
        delegate!(self, s => s.latest_number())
    }
    async fn history(&self) -> Result<Vec<HistoryEntry>, StoreError> {
        delegate!(self, s => s.history())
    }
    fn store_id(&self) -> &str {
        match self {
            AnyStore::Sqlite(s) => s.store_id(),
            AnyStore::Postgres(s) => s.store_id(),
        }
    }
    async fn ping(&self) -> Result<(), StoreError> {
        delegate!(self, s => s.ping())
    }
    async fn commit(
        &self,
        parent: u64,
        operation: Operation,
        summary: &str,
        author: &str,
        documents: &DocumentSet,
        now: i64,
    ) -> Result<RevisionInfo, StoreError> {
        delegate!(self, s => s.commit(parent, operation, summary, author, documents, now))
    }
    async fn register_clusters(
        &self,
        ids: &[String],
        labels: &BTreeMap<String, String>,
        now: i64,
    ) -> Result<Vec<String>, StoreError> {
        delegate!(self, s => s.register_clusters(ids, labels, now))
    }
    async fn label_cluster(
        &self,
        id: &str,
        set: &BTreeMap<String, String>,
        remove: &[String],
    ) -> Result<Option<BTreeMap<String, String>>, StoreError> {
        delegate!(self, s => s.label_cluster(id, set, remove))
    }
    async fn remove_cluster(&self, id: &str, now: i64) -> Result<bool, StoreError> {
        delegate!(self, s => s.remove_cluster(id, now))
    }
    async fn registrations(&self) -> Result<Vec<Registration>, StoreError> {
        delegate!(self, s => s.registrations())
    }
    async fn put_join_token(&self, id: &str, digest: &str, expires: i64) -> Result<bool, StoreError> {
        delegate!(self, s => s.put_join_token(id, digest, expires))
    }
    async fn take_join_token(&self, id: &str, digest: &str, now: i64) -> Result<TokenUse, StoreError> {
        delegate!(self, s => s.take_join_token(id, digest, now))
    }
    async fn hellos(&self, hellos: &[Hello], now: i64) -> Result<Vec<Option<Registration>>, StoreError> {
        delegate!(self, s => s.hellos(hellos, now))
    }
    async fn record_reports(&self, reports: &[ClusterReport]) -> Result<Vec<String>, StoreError> {
        delegate!(self, s => s.record_reports(reports))
    }
    async fn request_adopt(&self, id: &str) -> Result<bool, StoreError> {
        delegate!(self, s => s.request_adopt(id))
    }
    async fn clear_adopt(&self, id: &str) -> Result<(), StoreError> {
        delegate!(self, s => s.clear_adopt(id))
    }
    async fn adopt_requested(&self, id: &str) -> Result<bool, StoreError> {
        delegate!(self, s => s.adopt_requested(id))
    }
    async fn record_connections(&self, replica: &str, clusters: &[String], now: i64) -> Result<(), StoreError> {
        delegate!(self, s => s.record_connections(replica, clusters, now))
    }
    async fn record_disconnect(&self, id: &str, replica: &str, now: i64) -> Result<(), StoreError> {
        delegate!(self, s => s.record_disconnect(id, replica, now))
    }
    async fn clusters(&self) -> Result<Vec<ClusterRecord>, StoreError> {
        delegate!(self, s => s.clusters())
    }
    async fn agents(&self, cluster_id: &str) -> Result<Vec<AgentRecord>, StoreError> {
        delegate!(self, s => s.agents(cluster_id))
    }
}

async fn connections_are_recorded_renewed_and_released_per_replica(backend: Backend) {
    let (store, _fixture) = open(backend).await;
    join(&store, "c1", &BTreeMap::new(), 1).await.unwrap();
    join(&store, "c2", &BTreeMap::new(), 1).await.unwrap();
    let holder = |clusters: Vec<ClusterRecord>| {
        clusters
            .into_iter()
            .map(|c| (c.id, c.connected_replica, c.last_seen_unix_millis))
            .collect::<Vec<_>>()
    };
    store
        .record_connections("hub-a", &["c1".to_string(), "c2".to_string(), "ghost".to_string()], 10)
        .await
        .unwrap();
    assert_eq!(
        holder(store.clusters().await.unwrap()),
        [
            ("c1".into(), Some("hub-a".into()), 10),
            ("c2".into(), Some("hub-a".into()), 10)
        ]
    );
    // c2 moves to hub-b; hub-a's late disconnect of c2 must not clear hub-b's hold.
    store
        .record_connections("hub-b", &["c2".to_string()], 20)
        .await
        .unwrap();
    store.record_disconnect("c2", "hub-a", 21).await.unwrap();
    store.record_disconnect("c1", "hub-a", 22).await.unwrap();
    assert_eq!(
        holder(store.clusters().await.unwrap()),
        [("c1".into(), None, 22), ("c2".into(), Some("hub-b".into()), 21)]
    );
    // A disconnect never moves last_seen backwards.
    store.record_disconnect("c2", "hub-b", 5).await.unwrap();
    assert_eq!(holder(store.clusters().await.unwrap())[1], ("c2".into(), None, 21));
    assert!(store.record_connections("hub-a", &[], 30).await.is_ok());
}

fn policy_yaml(name: &str, cidr: &str) -> String {
    format!(
        "apiVersion: tollgate.dev/v1alpha1
kind: EgressPolicy
metadata: {{name: {name}}}
spec:
  egress: [{{to: [{{ipBlock: {{cidr: {cidr}}}}}], ports: [{{port: 443}}]}}]
"
    )
}

fn policy(name: &str) -> Document {
    policy_with_cidr(name, "10.0.0.0/8")
}

fn policy_with_cidr(name: &str, cidr: &str) -> Document {
    let set = DocumentSet::from_yaml("test", &policy_yaml(name, cidr)).expect("test policy is valid");
    set.documents().next().expect("one document")
}

fn guardrail(name: &str) -> Document {
    let yaml = format!(
        "apiVersion: tollgate.dev/v1alpha1
kind: EgressGuardrail
metadata: {{name: {name}}}
spec:
  clusterSelector: {{matchLabels: {{env: prod}}}}
  verifiedDefault: BaselineOnly
  allowedDestinations: [{{cidr: 10.0.0.0/8}}]
"
    );
    let set = DocumentSet::from_yaml("test", &yaml).expect("test guardrail is valid");
    set.documents().next().expect("one document")
}

fn set_of(documents: impl IntoIterator<Item = Document>) -> DocumentSet {
    let mut set = DocumentSet::default();
    for document in documents {
        set.insert(document);
    }
    set
}

/// Registers cluster `id` and says hello as its spoke would.
async fn join(store: &AnyStore, id: &str, labels: &BTreeMap<String, String>, now: i64) -> Result<(), StoreError> {
    store.register_cluster(id, labels, now).await?;
    store.hello(id, labels, 0, now).await?.expect("registered");
    Ok(())
}

fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
}

fn raw_connection(dir: &Path) -> rusqlite::Connection {
    rusqlite::Connection::open(dir.join(DATABASE_FILE)).unwrap()
}

fn agent(namespace: &str, name: &str) -> AgentRecord {
    AgentRecord {
        namespace: namespace.to_string(),
        name: name.to_string(),
        labels: labels(&[("tier", "llm")]),
        verified: true,
        verification_reason: Reason::MtlsVerified,
        mode: Mode::Scoped,
        rule_count: 2,
        rule_sources: vec!["local".to_string(), "EgressPolicy/llm-apis".to_string()],
        applied_revision: 3,
        errors: vec!["a local rule was invalid".to_string()],
        dropped: vec!["203.0.113.0/24 is outside the ceiling".to_string()],
        plan_inputs: Some(pb::PlanInputs {
            target_name: format!("{name}-deploy"),
            ..Default::default()
        }),
        fqdn_names: vec!["api.openai.com".to_string()],
        widened_by: vec!["allow-all-egress".to_string()],
    }
}

#[test]
fn operation_names_round_trip() {
    for operation in [Operation::Apply, Operation::Delete, Operation::Rollback] {
        assert_eq!(Operation::parse(operation.as_str()), Some(operation));
        assert_eq!(operation.to_string().parse::<Operation>(), Ok(operation));
    }
    assert_eq!(Operation::parse("Apply"), None);
    assert!("prune".parse::<Operation>().unwrap_err().contains("prune"));
}

async fn empty_store_is_revision_zero_with_an_empty_set(backend: Backend) {
    let (store, _fixture) = open(backend).await;
    assert_eq!(store.latest().await.unwrap(), Revision::initial());
    assert_eq!(store.revision(0).await.unwrap(), Revision::initial());
    assert!(matches!(store.revision(1).await, Err(StoreError::NoSuchRevision(1))));
    assert!(store.history().await.unwrap().is_empty());
}

async fn revisions_are_monotonic_from_one_and_history_lists_them_in_order(backend: Backend) {
    let (store, fixture) = open(backend).await;
    let one = set_of([policy("p1")]);
    let two = set_of([policy("p1"), policy("p2"), guardrail("prod")]);
    let three = set_of([policy("p2"), guardrail("prod")]);

    let r1 = store
        .commit(0, Operation::Apply, "apply: +p1", "alice", &one, 1_000)
        .await
        .unwrap();
    let r2 = store
        .commit(1, Operation::Apply, "apply: +p2 +prod", "alice", &two, 2_000)
        .await
        .unwrap();
    let r3 = store
        .commit(2, Operation::Delete, "delete: -p1", "alice", &three, 3_000)
        .await
        .unwrap();
    assert_eq!((r1.number, r2.number, r3.number), (1, 2, 3));

    let expected = vec![
        RevisionInfo {
            number: 1,
            created_unix_millis: 1_000,
            operation: Operation::Apply,
            summary: "apply: +p1".to_string(),
            document_count: 1,
            author: "alice".to_string(),
        },
        RevisionInfo {
            number: 2,
            created_unix_millis: 2_000,
            operation: Operation::Apply,
            summary: "apply: +p2 +prod".to_string(),
            document_count: 3,
            author: "alice".to_string(),
        },
        RevisionInfo {
            number: 3,
            created_unix_millis: 3_000,
            operation: Operation::Delete,
            summary: "delete: -p1".to_string(),
            document_count: 2,
            author: "alice".to_string(),
        },
    ];
    assert_eq!(vec![r1, r2, r3], expected);
    assert_eq!(readable_history(&store).await, expected);

    let latest = store.latest().await.unwrap();
    assert_eq!(latest.info, expected[2]);
    assert_eq!(latest.documents, three);

    // The history survives a reopen.
    drop(store);
    let store = fixture.reopen().await;
    assert_eq!(readable_history(&store).await, expected);
    assert_eq!(store.revision(2).await.unwrap().documents, two);
}

async fn every_revision_returns_exactly_its_set_and_rollback_is_byte_exact(backend: Backend) {
    let (store, fixture) = open(backend).await;
    let a = set_of([
        policy("alpha"),
        policy_with_cidr("beta", "192.168.0.0/16"),
        guardrail("prod"),
    ]);
    let b = set_of([policy_with_cidr("alpha", "172.16.0.0/12"), policy("gamma")]);

    store.commit(0, Operation::Apply, "A", "alice", &a, 1).await.unwrap();
    store.commit(1, Operation::Apply, "B", "alice", &b, 2).await.unwrap();
    for (number, set) in [(1, &a), (2, &b)] {
        let revision = store.revision(number).await.unwrap();
        assert_eq!(&revision.documents, set);
        assert_eq!(revision.documents.to_yaml(), set.to_yaml());
    }

    // Rollback to 1: commit revision 1's documents again, as a new revision.
    let target = store.revision(1).await.unwrap();
    let info = store
        .commit(2, Operation::Rollback, "rollback to 1", "alice", &target.documents, 3)
        .await
        .unwrap();
    assert_eq!((info.number, info.operation), (3, Operation::Rollback));
    let latest = store.latest().await.unwrap();
    assert_eq!(latest.info.number, 3);
    assert_eq!(latest.documents, a);
    assert_eq!(latest.documents.to_yaml(), a.to_yaml());
    // What is stored is the canonical text itself.
    assert_eq!(fixture.stored_yaml(3).await, a.to_yaml());
    // Revision 2 is still there, unchanged.
    assert_eq!(store.revision(2).await.unwrap().documents, b);
}

async fn a_stale_parent_conflicts_and_writes_nothing(backend: Backend) {
    let (store, _fixture) = open(backend).await;
    let first = set_of([policy("p1")]);
    store
        .commit(0, Operation::Apply, "first", "alice", &first, 1)
        .await
        .unwrap();
    store
        .commit(1, Operation::Apply, "second", "alice", &set_of([policy("p2")]), 2)
        .await
        .unwrap();

    for parent in [0, 1, 3, 7] {
        let error = store
            .commit(parent, Operation::Apply, "stale", "alice", &set_of([policy("lost")]), 3)
            .await
            .unwrap_err();
        assert!(
            matches!(error, StoreError::Conflict { expected, actual: 2 } if expected == parent),
            "{error:?}"
        );
        assert_eq!(
            error.to_string(),
            format!("revision {parent} is no longer the latest (now 2): another change was committed first")
        );
    }
    let history = store.history().await.unwrap();
    assert_eq!(history.iter().map(|r| r.info.number).collect::<Vec<_>>(), [1, 2]);
    assert_eq!(store.latest().await.unwrap().documents, set_of([policy("p2")]));
}

async fn concurrent_commits_serialise_without_lost_updates(backend: Backend) {
    const TASKS: usize = 20;
    let (store, _fixture) = open(backend).await;
    let tasks: Vec<_> = (0..TASKS)
        .map(|i| {
            let store = store.clone();
            tokio::spawn(async move {
                let name = format!("policy-{i:02}");
                let mut conflicts = 0_u32;
                loop {
                    let latest = store.latest().await.unwrap();
                    let mut documents = latest.documents.clone();
                    documents.insert(policy(&name));
                    tokio::task::yield_now().await;
                    match store
                        .commit(
                            latest.info.number,
                            Operation::Apply,
                            &format!("apply: +{name}"),
                            "alice",
                            &documents,
                            1,
                        )
                        .await
                    {
                        Ok(info) => return (info.number, conflicts),
                        Err(StoreError::Conflict { .. }) => conflicts += 1,
                        Err(error) => panic!("{error}"),
                    }
                }
            })
        })
        .collect();
    let mut numbers = Vec::new();
    for task in tasks {
        numbers.push(task.await.unwrap().0);
    }
    numbers.sort_unstable();
    assert_eq!(
        numbers,
        (1..=TASKS as u64).collect::<Vec<_>>(),
        "distinct, consecutive revisions"
    );

    let history = store.history().await.unwrap();
    assert_eq!(history.len(), TASKS);
    for (k, entry) in history.iter().enumerate() {
        let info = &entry.info;
        // Each revision adds exactly one policy on top of its parent: nothing was lost in between.
        assert_eq!((info.number, info.document_count), (k as u64 + 1, k as u32 + 1));
    }
    let latest = store.latest().await.unwrap();
    assert_eq!(latest.documents.len(), TASKS);
    for i in 0..TASKS {
        assert!(latest.documents.policies.contains_key(&format!("policy-{i:02}")));
    }
}

async fn clusters_inventory_and_applied_revision_round_trip_and_persist_across_reopen(backend: Backend) {
    let (store, fixture) = open(backend).await;
    assert!(
        store
            .register_cluster("west", &labels(&[("env", "prod")]), 90)
            .await
            .unwrap()
    );
    assert!(
        store
            .register_cluster("east", &labels(&[("env", "dev")]), 95)
            .await
            .unwrap()
    );
    // Registering again changes nothing (labels change with `label_cluster`).
    assert!(
        !store
            .register_cluster("west", &labels(&[("env", "dev")]), 99)
            .await
            .unwrap()
    );
    let west = store
        .hello("west", &labels(&[("env", "reported")]), 0, 100)
        .await
        .unwrap();
    assert_eq!(
        west,
        Some(Registration {
            id: "west".to_string(),
            labels: labels(&[("env", "prod")]),
            refuse_certificates_before_unix_millis: 0,
            adopt_requested: false,
        }),
        "the registry's labels, not the reported ones"
    );
    store
        .hello("east", &labels(&[("env", "dev")]), 0, 150)
        .await
        .unwrap()
        .unwrap();
    // A second hello: reported labels replaced, first_seen kept, last_seen moved.
    store
        .hello("west", &labels(&[("env", "prod"), ("region", "eu")]), 0, 200)
        .await
        .unwrap()
        .unwrap();
    store
        .record_facts("west", r#"{"kubernetesVersion":"v1.33.1"}"#, 300)
        .await
        .unwrap();
    let inventory = vec![agent("team-a", "planner"), {
        let mut other = agent("team-a", "coder");
        other.verified = false;
        other.mode = Mode::Restricted;
        other.rule_sources.clear();
        other.errors.clear();
        other.dropped.clear();
        other.labels.clear();
        other.applied_revision = 0;
        other
    }];
    store.record_inventory("west", &inventory, 400).await.unwrap();
    store.record_applied("west", 7, 500).await.unwrap();
    store.touch("east", 600).await.unwrap();

    let expected_clusters = vec![
        ClusterRecord {
            id: "east".to_string(),
            labels: labels(&[("env", "dev")]),
            reported_labels: labels(&[("env", "dev")]),
            registered_unix_millis: 95,
            first_seen_unix_millis: 150,
            last_seen_unix_millis: 600,
            facts_json: None,
            applied_revision: 0,
            connected_replica: None,
            ..ClusterRecord::default()
        },
        ClusterRecord {
            id: "west".to_string(),
            labels: labels(&[("env", "prod")]),
            reported_labels: labels(&[("env", "prod"), ("region", "eu")]),
            registered_unix_millis: 90,
            first_seen_unix_millis: 100,
            last_seen_unix_millis: 500,
            facts_json: Some(r#"{"kubernetesVersion":"v1.33.1"}"#.to_string()),
            applied_revision: 7,
            connected_replica: None,
            ..ClusterRecord::default()
        },
    ];
    let mut expected_agents = inventory.clone();
    expected_agents.sort_by(|a, b| (&a.namespace, &a.name).cmp(&(&b.namespace, &b.name)));
    assert_eq!(expected_agents[0].name, "coder");

    assert_eq!(store.clusters().await.unwrap(), expected_clusters);
    assert_eq!(store.agents("west").await.unwrap(), expected_agents);
    assert!(store.agents("east").await.unwrap().is_empty());
    assert!(store.agents("nowhere").await.unwrap().is_empty());

    drop(store);
    let store = fixture.reopen().await;
    assert_eq!(store.clusters().await.unwrap(), expected_clusters);
    assert_eq!(store.agents("west").await.unwrap(), expected_agents);
}

async fn the_registry_adds_labels_and_removes_clusters_and_remembers_removals(backend: Backend) {
    let (store, fixture) = open(backend).await;
    // A hello of an unregistered id writes nothing.
    assert_eq!(store.hello("west", &BTreeMap::new(), 0, 1).await.unwrap(), None);
    assert!(store.clusters().await.unwrap().is_empty());

    assert!(
        store
            .register_cluster("west", &labels(&[("env", "prod"), ("tier", "1")]), 10)
            .await
            .unwrap()
    );
    let relabelled = store
        .label_cluster(
            "west",
            &labels(&[("region", "eu"), ("env", "staging")]),
            &["tier".to_string()],
        )
        .await
        .unwrap();
    assert_eq!(relabelled, Some(labels(&[("env", "staging"), ("region", "eu")])));
    assert_eq!(
        store.label_cluster("east", &labels(&[("a", "b")]), &[]).await.unwrap(),
        None,
        "an unregistered cluster"
    );
    assert!(
        store.clusters().await.unwrap().iter().all(|c| c.id != "east"),
        "nothing created"
    );
    let registered = store.clusters().await.unwrap();
    assert_eq!(registered.len(), 1);
    assert_eq!(
        (
            registered[0].registered_unix_millis,
            registered[0].first_seen_unix_millis
        ),
        (10, 0),
        "registered, never connected"
    );

    store
        .hello("west", &labels(&[("env", "prod")]), 5_000, 20)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        store.clusters().await.unwrap()[0].certificate_not_after_unix_millis,
        5_000
    );
    store.record_inventory("west", &[agent("a", "one")], 21).await.unwrap();
    assert!(store.remove_cluster("west", 30).await.unwrap());
    assert!(!store.remove_cluster("west", 31).await.unwrap(), "already removed");
    assert!(store.clusters().await.unwrap().is_empty());
    assert!(
        store.agents("west").await.unwrap().is_empty(),
        "its inventory went with it"
    );
    assert_eq!(store.hello("west", &BTreeMap::new(), 0, 32).await.unwrap(), None);
    assert!(
        store.record_applied("west", 1, 33).await.is_err(),
        "reports of a removed cluster"
    );

    // Registered again: the certificates issued before the removal stay refused, across a reopen.
    assert!(store.register_cluster("west", &BTreeMap::new(), 40).await.unwrap());
    drop(store);
    let store = fixture.reopen().await;
    let again = store.hello("west", &BTreeMap::new(), 0, 41).await.unwrap().unwrap();
    assert_eq!(again.refuse_certificates_before_unix_millis, 30);
    assert_eq!(again.labels, BTreeMap::new(), "the old labels are gone");
    // A batch is all or nothing.
    let batch = ["east".to_string(), "west".to_string()];
    assert_eq!(
        store.register_clusters(&batch, &BTreeMap::new(), 45).await.unwrap(),
        ["west"]
    );
    assert!(
        store.clusters().await.unwrap().iter().all(|c| c.id != "east"),
        "nothing registered"
    );
    assert!(
        store
            .register_clusters(&batch[..1], &BTreeMap::new(), 50)
            .await
            .unwrap()
            .is_empty()
    );
    assert_eq!(
        store.registrations().await.unwrap(),
        [
            Registration {
                id: "east".to_string(),
                labels: BTreeMap::new(),
                refuse_certificates_before_unix_millis: 0,
                adopt_requested: false,
            },
            Registration {
                id: "west".to_string(),
                labels: BTreeMap::new(),
                refuse_certificates_before_unix_millis: 30,
                adopt_requested: false,
            },
        ]
    );
}

async fn join_tokens_work_once_expire_and_go_with_their_cluster(backend: Backend) {
    let (store, _fixture) = open(backend).await;
    assert!(
        !store.put_join_token("ghost", "d1", 100).await.unwrap(),
        "not registered"
    );
    store.register_cluster("c1", &BTreeMap::new(), 1).await.unwrap();
    assert!(store.put_join_token("c1", "d1", 100).await.unwrap());
    assert_eq!(
        store.take_join_token("c1", "wrong", 10).await.unwrap(),
        TokenUse::Unknown
    );
    assert_eq!(store.take_join_token("c1", "d1", 10).await.unwrap(), TokenUse::Accepted);
    assert_eq!(
        store.take_join_token("c1", "d1", 10).await.unwrap(),
        TokenUse::Unknown,
        "works once"
    );
    // A newer token replaces the older one.
    store.put_join_token("c1", "d2", 100).await.unwrap();
    store.put_join_token("c1", "d3", 100).await.unwrap();
    assert_eq!(store.take_join_token("c1", "d2", 10).await.unwrap(), TokenUse::Unknown);
    assert_eq!(store.take_join_token("c1", "d3", 100).await.unwrap(), TokenUse::Expired);
    assert_eq!(
        store.take_join_token("c1", "d3", 10).await.unwrap(),
        TokenUse::Unknown,
        "an expired one is gone"
    );
    // Removing the cluster removes its token.
    store.put_join_token("c1", "d4", 100).await.unwrap();
    store.remove_cluster("c1", 20).await.unwrap();
    store.register_cluster("c1", &BTreeMap::new(), 30).await.unwrap();
    assert_eq!(store.take_join_token("c1", "d4", 40).await.unwrap(), TokenUse::Unknown);
}

async fn revisions_record_their_author(backend: Backend) {
    let (store, _fixture) = open(backend).await;
    store
        .commit(0, Operation::Apply, "one", "alice", &set_of([policy("p1")]), 1)
        .await
        .unwrap();
    store
        .commit(1, Operation::Delete, "two", "(plaintext)", &DocumentSet::default(), 2)
        .await
        .unwrap();
    let history = store.history().await.unwrap();
    let authors: Vec<&str> = history.iter().map(|e| e.info.author.as_str()).collect();
    assert_eq!(authors, ["alice", "(plaintext)"]);
    assert_eq!(store.latest().await.unwrap().info.author, "(plaintext)");
}

/// A store written before the registry existed: every cluster that had connected is registered with the labels
/// it last reported (once), and older revisions have no author.
#[tokio::test]
async fn clusters_known_before_the_registry_keep_their_reported_labels() {
    let dir = tempfile::tempdir().unwrap();
    {
        let mut connection = rusqlite::Connection::open(dir.path().join(DATABASE_FILE)).unwrap();
        connection
            .execute_batch(
                "CREATE TABLE schema_migrations (version INTEGER PRIMARY KEY, applied_unix_millis INTEGER NOT NULL);",
            )
            .unwrap();
        let tx = connection.transaction().unwrap();
        for (version, sql) in MIGRATIONS.iter().filter(|(v, _)| *v < 7) {
            tx.execute_batch(sql).unwrap();
            tx.execute("INSERT INTO schema_migrations VALUES (?1, 0)", [version])
                .unwrap();
        }
        tx.execute(
            "INSERT INTO clusters (id, labels_json, first_seen_unix_millis, last_seen_unix_millis)
             VALUES ('west', '{\"env\":\"prod\"}', 5, 9)",
            [],
        )
        .unwrap();
        tx.execute(
            "INSERT INTO revisions (number, created_unix_millis, operation, summary, document_count, documents_yaml)
             VALUES (1, 1, 'apply', 'old', 0, '')",
            [],
        )
        .unwrap();
        tx.commit().unwrap();
    }
    let store = SqliteStore::open(dir.path()).unwrap();
    let west = &store.clusters().await.unwrap()[0];
    assert_eq!(west.labels, labels(&[("env", "prod")]));
    assert_eq!(west.reported_labels, labels(&[("env", "prod")]));
    assert_eq!(west.registered_unix_millis, 5);
    // From now on a hello reports labels without changing the registry's.
    let registration = store
        .hello("west", &labels(&[("env", "dev")]), 0, 10)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(registration.labels, labels(&[("env", "prod")]));
    assert_eq!(store.history().await.unwrap()[0].info.author, "");
}

async fn inventory_replacement_removes_agents_not_listed(backend: Backend) {
    let (store, _fixture) = open(backend).await;
    join(&store, "c1", &BTreeMap::new(), 1).await.unwrap();
    join(&store, "c2", &BTreeMap::new(), 1).await.unwrap();
    store
        .record_inventory("c1", &[agent("b", "one"), agent("a", "two"), agent("a", "three")], 2)
        .await
        .unwrap();
    store.record_inventory("c2", &[agent("a", "two")], 2).await.unwrap();

    let mut updated = agent("a", "two");
    updated.mode = Mode::BaselineOnly;
    store
        .record_inventory("c1", &[updated.clone(), agent("c", "new")], 3)
        .await
        .unwrap();
    let names = |agents: Vec<AgentRecord>| {
        agents
            .into_iter()
            .map(|a| format!("{}/{}", a.namespace, a.name))
            .collect::<Vec<_>>()
    };
    let c1 = store.agents("c1").await.unwrap();
    assert_eq!(c1[0], updated);
    assert_eq!(names(c1), ["a/two", "c/new"]);
    // Another cluster's inventory is untouched.
    assert_eq!(names(store.agents("c2").await.unwrap()), ["a/two"]);

    // An empty inventory clears it.
    store.record_inventory("c1", &[], 4).await.unwrap();
    assert!(store.agents("c1").await.unwrap().is_empty());
    assert_eq!(store.clusters().await.unwrap()[0].last_seen_unix_millis, 4);
}

async fn a_duplicate_agent_in_an_inventory_is_refused_and_changes_nothing(backend: Backend) {
    let (store, _fixture) = open(backend).await;
    join(&store, "c1", &BTreeMap::new(), 1).await.unwrap();
    store.record_inventory("c1", &[agent("a", "kept")], 2).await.unwrap();
    let error = store
        .record_inventory("c1", &[agent("a", "x"), agent("a", "x")], 3)
        .await
        .unwrap_err();
    assert!(error.to_string().contains("a/x twice"), "{error}");
    assert_eq!(store.agents("c1").await.unwrap(), [agent("a", "kept")]);
    assert_eq!(store.clusters().await.unwrap()[0].last_seen_unix_millis, 2);
}

async fn updates_of_an_unregistered_cluster_fail_and_create_nothing(backend: Backend) {
    let (store, _fixture) = open(backend).await;
    let errors = [
        store.record_facts("ghost", "{}", 1).await.unwrap_err(),
        store
            .record_inventory("ghost", &[agent("a", "b")], 1)
            .await
            .unwrap_err(),
        store.record_applied("ghost", 1, 1).await.unwrap_err(),
        store.touch("ghost", 1).await.unwrap_err(),
    ];
    for error in errors {
        assert!(
            matches!(&error, StoreError::NotRegistered(id) if id == "ghost"),
            "{error}"
        );
    }
    assert!(store.clusters().await.unwrap().is_empty());
    assert!(store.agents("ghost").await.unwrap().is_empty());
}

#[tokio::test]
async fn migrations_apply_once_and_reopening_applies_nothing_twice() {
    let dir = tempfile::tempdir().unwrap();
    let store = SqliteStore::open(dir.path()).unwrap();
    store
        .commit(0, Operation::Apply, "one", "alice", &set_of([policy("p1")]), 1)
        .await
        .unwrap();
    drop(store);
    let recorded = || {
        let connection = raw_connection(dir.path());
        let mut statement = connection
            .prepare("SELECT version, applied_unix_millis FROM schema_migrations ORDER BY version")
            .unwrap();
        statement
            .query_map([], |row| Ok((row.get::<_, u32>(0)?, row.get::<_, i64>(1)?)))
            .unwrap()
            .collect::<Result<Vec<_>, _>>()
            .unwrap()
    };
    let first = recorded();
    assert_eq!(
        first.iter().map(|(v, _)| *v).collect::<Vec<_>>(),
        MIGRATIONS.iter().map(|(v, _)| *v).collect::<Vec<_>>()
    );
    assert_eq!(
        MIGRATIONS.iter().map(|(v, _)| *v).collect::<Vec<_>>(),
        (1..=MIGRATIONS.len() as u32).collect::<Vec<_>>(),
        "versions are 1, 2, 3, …"
    );

    for _ in 0..2 {
        let store = SqliteStore::open(dir.path()).unwrap();
        assert_eq!(store.latest().await.unwrap().info.number, 1);
    }
    assert_eq!(recorded(), first, "nothing re-applied");
    let journal: String = raw_connection(dir.path())
        .query_row("PRAGMA journal_mode", [], |row| row.get(0))
        .unwrap();
    assert_eq!(journal, "wal");
}

#[tokio::test]
async fn a_database_from_a_newer_hub_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    drop(SqliteStore::open(dir.path()).unwrap());
    let newer = MIGRATIONS.len() as u32 + 1;
    raw_connection(dir.path())
        .execute(
            "INSERT INTO schema_migrations (version, applied_unix_millis) VALUES (?1, 0)",
            [newer],
        )
        .unwrap();
    let error = SqliteStore::open(dir.path()).unwrap_err();
    let message = error.to_string();
    assert!(matches!(error, StoreError::Invalid(_)));
    assert!(
        message.contains(&format!("schema version {newer} is newer than this hub supports")),
        "{message}"
    );
    assert!(message.contains(DATABASE_FILE), "{message}");
}

#[tokio::test]
async fn an_unreadable_agent_record_names_its_field() {
    let dir = tempfile::tempdir().unwrap();
    let store = AnyStore::Sqlite(SqliteStore::open(dir.path()).unwrap());
    join(&store, "c1", &BTreeMap::new(), 1).await.unwrap();
    store.record_inventory("c1", &[agent("a", "one")], 2).await.unwrap();
    for (column, value, field) in [
        ("mode", "wide-open", "mode of agent a/one"),
        ("verification_reason", "Trusted", "verification reason of agent a/one"),
        ("plan_inputs", "x'ff'", "plan inputs of agent a/one"),
    ] {
        let db = raw_connection(dir.path());
        let value = if value.starts_with("x'") {
            value.to_string()
        } else {
            format!("'{value}'")
        };
        db.execute(&format!("UPDATE agents SET {column} = {value}"), [])
            .unwrap();
        let error = store.agents("c1").await.unwrap_err();
        assert!(matches!(error, StoreError::Unreadable { .. }), "{error:?}");
        assert!(error.to_string().contains(field), "{error}");
        store.record_inventory("c1", &[agent("a", "one")], 3).await.unwrap();
        assert_eq!(
            store.agents("c1").await.unwrap(),
            [agent("a", "one")],
            "a new inventory replaces it"
        );
    }
}

#[tokio::test]
async fn an_unreadable_stored_revision_is_reported_as_corrupt() {
    let dir = tempfile::tempdir().unwrap();
    let store = SqliteStore::open(dir.path()).unwrap();
    store
        .commit(0, Operation::Apply, "one", "alice", &set_of([policy("p1")]), 1)
        .await
        .unwrap();
    raw_connection(dir.path())
        .execute(
            "UPDATE revisions SET documents_yaml = 'kind: Nope' WHERE number = 1",
            [],
        )
        .unwrap();
    for result in [store.revision(1).await, store.latest().await] {
        let error = result.unwrap_err();
        assert!(matches!(error, StoreError::Corrupt { revision: 1, .. }), "{error:?}");
        assert!(
            error.to_string().starts_with("stored revision 1 is unreadable: "),
            "{error}"
        );
    }
    // The history itself still reads.
    assert_eq!(store.history().await.unwrap().len(), 1);
}

/// The environment variable that turns [`sigkill_child_process_entry_point`] into the child of
/// [`an_acknowledged_commit_survives_sigkill`]: the folder of the store it commits to.
const CHILD_DIR_ENV: &str = "TOLLGATE_STORE_CHILD_DIR";
/// What the child prints, followed by the latest revision number, once its commits are acknowledged.
const CHILD_MARKER: &str = "tollgate-store-child committed";
/// How many revisions the child commits.
const CHILD_COMMITS: u64 = 3;

/// Not a test of its own: a no-op unless [`CHILD_DIR_ENV`] is set. The SIGKILL test re-runs this test executable
/// filtered to exactly this function, with the variable set, to get a child process without a separate binary.
/// The child opens the store, commits, prints `tollgate-store-child committed N` once the commits returned `Ok`,
/// and sleeps with the store still open (no clean close, no checkpoint) until it is killed.
#[test]
fn sigkill_child_process_entry_point() {
    use std::io::Write as _;

    let Some(dir) = std::env::var_os(CHILD_DIR_ENV) else {
        return;
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let (store, number) = runtime.block_on(async {
        let store = SqliteStore::open(Path::new(&dir)).unwrap();
        let mut documents = DocumentSet::default();
        let mut number = 0;
        for i in 1..=CHILD_COMMITS {
            documents.insert(policy(&format!("child-{i}")));
            number = store
                .commit(
                    number,
                    Operation::Apply,
                    &format!("child commit {i}"),
                    "alice",
                    &documents,
                    1,
                )
                .await
                .unwrap()
                .number;
        }
        (store, number)
    });
    println!("\n{CHILD_MARKER} {number}");
    std::io::stdout().flush().unwrap();
    std::thread::sleep(std::time::Duration::from_secs(120));
    drop(store);
    panic!("the parent test should have killed this process with SIGKILL");
}

#[cfg(unix)]
#[tokio::test]
async fn an_acknowledged_commit_survives_sigkill() {
    use std::io::BufRead as _;
    use std::os::unix::process::ExitStatusExt as _;
    use std::process::{Command, Stdio};
    use std::sync::mpsc;
    use std::time::Duration;

    let dir = tempfile::tempdir().unwrap();
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args([
            "sigkill_child_process_entry_point",
            "--exact",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(CHILD_DIR_ENV, dir.path())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();

    // Read the child's output on a thread so that a child that never reports cannot hang the test.
    let stdout = child.stdout.take().unwrap();
    let (lines_tx, lines_rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if lines_tx.send(line).is_err() {
                break;
            }
        }
    });
    let acknowledged = loop {
        match lines_rx.recv_timeout(Duration::from_secs(60)) {
            Ok(line) => {
                // libtest may have printed `test NAME ... ` on the same line first.
                if let Some((_, number)) = line.split_once(CHILD_MARKER) {
                    break number.trim().parse::<u64>().unwrap();
                }
            }
            Err(error) => {
                let _ = child.kill();
                let _ = child.wait();
                panic!("the child never reported its commits: {error}");
            }
        }
    };
    assert_eq!(acknowledged, CHILD_COMMITS);

    child.kill().unwrap(); // SIGKILL on Unix
    let status = child.wait().unwrap();
    assert_eq!(status.signal(), Some(9), "{status:?}");
    // The commits were never checkpointed into the main file: reopening must recover them from the WAL.
    let wal = dir.path().join(format!("{DATABASE_FILE}-wal"));
    assert!(std::fs::metadata(&wal).unwrap().len() > 0, "{} is empty", wal.display());

    let store = SqliteStore::open(dir.path()).unwrap();
    let latest = store.latest().await.unwrap();
    assert_eq!(latest.info.number, acknowledged);
    assert_eq!(latest.documents.len() as u64, CHILD_COMMITS);
    assert_eq!(
        store
            .history()
            .await
            .unwrap()
            .iter()
            .map(|r| r.info.number)
            .collect::<Vec<_>>(),
        (1..=CHILD_COMMITS).collect::<Vec<_>>()
    );
}

/// Two PostgreSQL stores on one database are two hub replicas: their concurrent commits form one order.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn postgres_replicas_commit_concurrently_into_one_order() {
    let server = tollgate_e2e::Postgres::start().await.unwrap();
    let url = server.create_database().await.unwrap();
    let (a, b) = tokio::join!(PgStore::connect(&url, None), PgStore::connect(&url, None));
    let replicas = [a.unwrap(), b.unwrap()];
    let tasks: Vec<_> = (0..12)
        .map(|i| {
            let store = replicas[i % 2].clone();
            tokio::spawn(async move {
                let name = format!("policy-{i:02}");
                loop {
                    let latest = store.latest().await.unwrap();
                    let mut documents = latest.documents.clone();
                    documents.insert(policy(&name));
                    match store
                        .commit(latest.info.number, Operation::Apply, &name, "alice", &documents, 1)
                        .await
                    {
                        Ok(info) => return info.number,
                        Err(StoreError::Conflict { .. }) => continue,
                        Err(error) => panic!("{error}"),
                    }
                }
            })
        })
        .collect();
    let mut numbers = Vec::new();
    for task in tasks {
        numbers.push(task.await.unwrap());
    }
    numbers.sort_unstable();
    assert_eq!(numbers, (1..=12).collect::<Vec<u64>>());
    for store in &replicas {
        let latest = store.latest().await.unwrap();
        assert_eq!((latest.info.number, latest.documents.len()), (12, 12));
    }
}

/// A commit wakes every replica's listener once it is committed; a refused commit wakes nobody.
#[tokio::test]
async fn postgres_commits_notify_listeners_and_refused_commits_do_not() {
    use std::time::Duration;
    let server = tollgate_e2e::Postgres::start().await.unwrap();
    let url = server.create_database().await.unwrap();
    let store = PgStore::connect(&url, None).await.unwrap();
    let (wake, mut woken) = tokio::sync::mpsc::unbounded_channel();
    let listener = tokio::spawn(postgres::listen_for_revisions(url.clone(), None, wake));
    assert!(
        woken_within(&mut woken, Duration::from_secs(10)).await,
        "no wake after LISTEN"
    );

    store
        .commit(0, Operation::Apply, "one", "alice", &set_of([policy("p1")]), 1)
        .await
        .unwrap();
    assert!(
        woken_within(&mut woken, Duration::from_secs(5)).await,
        "no wake after a commit"
    );
    let refused = store
        .commit(0, Operation::Apply, "stale", "alice", &set_of([policy("p2")]), 2)
        .await;
    assert!(matches!(refused, Err(StoreError::Conflict { .. })));
    assert!(
        !woken_within(&mut woken, Duration::from_millis(500)).await,
        "a refused commit notified"
    );
    listener.abort();
}

async fn woken_within(woken: &mut tokio::sync::mpsc::UnboundedReceiver<()>, within: std::time::Duration) -> bool {
    matches!(tokio::time::timeout(within, woken.recv()).await, Ok(Some(())))
}

/// Replicas starting together apply each migration once; a schema newer than this build is refused.
#[tokio::test]
async fn postgres_migrations_run_once_and_a_newer_schema_is_refused() {
    let server = tollgate_e2e::Postgres::start().await.unwrap();
    let url = server.create_database().await.unwrap();
    let (a, b) = tokio::join!(PgStore::connect(&url, None), PgStore::connect(&url, None));
    a.unwrap();
    b.unwrap();
    let (client, connection) = tokio_postgres::connect(&url, tokio_postgres::NoTls).await.unwrap();
    tokio::spawn(connection);
    let versions: Vec<i32> = client
        .query("SELECT version FROM schema_migrations ORDER BY version", &[])
        .await
        .unwrap()
        .iter()
        .map(|row| row.get(0))
        .collect();
    let known = tollgate_hub::server::store::postgres::MIGRATIONS.len() as i32;
    assert_eq!(versions, (1..=known).collect::<Vec<_>>());
    client
        .execute("INSERT INTO schema_migrations VALUES (99, 0)", &[])
        .await
        .unwrap();
    let error = PgStore::connect(&url, None).await.unwrap_err();
    assert!(
        error
            .to_string()
            .contains(&format!("schema version 99 is newer than this hub supports ({known})")),
        "{error}"
    );
}

/// With `--store-ca`, every connection to the database is TLS, verified against that CA; a wrong CA is refused
/// with the reason, and the URL's `sslmode` must agree with the CA's presence.
#[tokio::test]
async fn postgres_over_tls_verifies_the_server_and_refuses_a_wrong_ca() {
    let server = tollgate_e2e::Postgres::start_with_tls().await.unwrap();
    let url = server.create_database().await.unwrap();
    let ca = server.ca_path().unwrap().to_path_buf();
    let store = PgStore::connect(&url, Some(&ca)).await.unwrap();
    store
        .commit(0, Operation::Apply, "one", "alice", &set_of([policy("p1")]), 1)
        .await
        .unwrap();
    assert_eq!(store.latest().await.unwrap().info.number, 1);
    let database = url.rsplit('/').next().unwrap().to_string();
    let (admin, connection) = tokio_postgres::connect(&server.url("postgres"), tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(connection);
    let row = admin
        .query_one(
            "SELECT count(*) FILTER (WHERE s.ssl), count(*) FILTER (WHERE NOT s.ssl)
             FROM pg_stat_ssl s JOIN pg_stat_activity a USING (pid) WHERE a.datname = $1",
            &[&database],
        )
        .await
        .unwrap();
    let (tls, plain): (i64, i64) = (row.get(0), row.get(1));
    assert!(tls >= 1 && plain == 0, "{tls} TLS and {plain} plaintext connections");

    // A CA that did not sign the server's certificate.
    let other = tollgate_e2e::Postgres::start_with_tls().await.unwrap();
    let error = PgStore::connect(&url, other.ca_path()).await.unwrap_err();
    assert!(matches!(error, StoreError::Backend { .. }), "{error:?}");
    // The driver's own words are the error's sources.
    let error = tollgate_process::error_chain(&error);
    assert!(error.contains("certificate"), "{error}");

    let error = PgStore::connect(&format!("{url}?sslmode=require"), None)
        .await
        .unwrap_err()
        .to_string();
    assert!(error.contains("sslmode=require needs --store-ca FILE"), "{error}");
    let error = PgStore::connect(&format!("{url}?sslmode=disable"), Some(&ca))
        .await
        .unwrap_err()
        .to_string();
    assert!(error.contains("sslmode=disable contradicts --store-ca"), "{error}");
    let error = PgStore::connect(&url, Some(std::path::Path::new("/nonexistent/ca.pem")))
        .await
        .unwrap_err()
        .to_string();
    assert!(error.contains("--store-ca /nonexistent/ca.pem"), "{error}");
}

async fn unreadable_revisions_are_skipped_marked_and_rolled_back_past(backend: Backend) {
    let (store, fixture) = open(backend).await;
    let one = set_of([policy("p1")]);
    store
        .commit(0, Operation::Apply, "one", "alice", &one, 1)
        .await
        .unwrap();
    store
        .commit(
            1,
            Operation::Apply,
            "two",
            "alice",
            &set_of([policy("p1"), policy("p2")]),
            2,
        )
        .await
        .unwrap();
    store
        .commit(2, Operation::Apply, "three", "alice", &set_of([policy("p3")]), 3)
        .await
        .unwrap();
    fixture.damage(2, "kind: Nope").await;
    fixture.damage(3, "{not yaml").await;

    let readable = store.latest_readable().await.unwrap();
    assert_eq!((readable.newest, readable.revision.info.number), (3, 1));
    assert_eq!(readable.revision.documents, one);
    assert_eq!(
        readable.skipped.iter().map(|(n, _)| *n).collect::<Vec<_>>(),
        [3, 2],
        "newest first"
    );
    assert_eq!(store.latest_number().await.unwrap(), 3);

    let history = store.history().await.unwrap();
    assert_eq!(
        history
            .iter()
            .map(|e| (e.info.number, e.unreadable.is_some()))
            .collect::<Vec<_>>(),
        [(1, false), (2, true), (3, true)]
    );
    assert_eq!(
        history[1].info.summary, "two",
        "the record of an unreadable revision is still listed"
    );

    // A rollback to the readable revision commits on top of the newest number, and is served from then on.
    let rolled = store
        .commit(3, Operation::Rollback, "rollback to 1", "alice", &one, 4)
        .await
        .unwrap();
    assert_eq!(rolled.number, 4);
    let readable = fixture.reopen().await.latest_readable().await.unwrap();
    assert_eq!((readable.newest, readable.revision.info.number), (4, 4));
    assert!(readable.skipped.is_empty());
    assert_eq!(readable.revision.documents, one);
}

async fn the_store_id_is_created_once_and_shared_by_every_opener(backend: Backend) {
    let (store, fixture) = open(backend).await;
    let id = store.store_id().to_string();
    assert_eq!(id.len(), 32, "{id}");
    assert!(id.bytes().all(|b| b.is_ascii_hexdigit()), "{id}");
    // A reopen (a restarted hub) and a second opener at once (another replica of the database) read the same id.
    let (again, other) = tokio::join!(fixture.reopen(), fixture.reopen());
    assert_eq!((again.store_id(), other.store_id()), (id.as_str(), id.as_str()));
    store.ping().await.unwrap();
    // Another (empty) store has another id.
    let (fresh, _fresh_fixture) = open(backend).await;
    assert_ne!(fresh.store_id(), id);
}

async fn reports_of_many_clusters_are_written_in_one_call(backend: Backend) {
    let (store, _fixture) = open(backend).await;
    join(&store, "c1", &BTreeMap::new(), 1).await.unwrap();
    join(&store, "c2", &BTreeMap::new(), 1).await.unwrap();
    let diverged = StoredCondition {
        type_: "Diverged".into(),
        reason: "OtherStore".into(),
        message: "the hub serves another store".into(),
    };
    let unknown = store
        .record_reports(&[
            ClusterReport {
                id: "c1".into(),
                facts_json: Some("{}".into()),
                inventory: Some(vec![agent("a", "x")]),
                applied_revision: Some(3),
                conditions: Some(vec![diverged.clone()]),
                last_seen_unix_millis: 50,
            },
            ClusterReport {
                id: "ghost".into(),
                applied_revision: Some(9),
                last_seen_unix_millis: 50,
                ..ClusterReport::default()
            },
            ClusterReport {
                id: "c2".into(),
                applied_revision: Some(2),
                last_seen_unix_millis: 40,
                ..ClusterReport::default()
            },
        ])
        .await
        .unwrap();
    assert_eq!(unknown, ["ghost"]);
    let clusters = store.clusters().await.unwrap();
    let row = |c: &ClusterRecord| {
        (
            c.id.clone(),
            c.applied_revision,
            c.last_seen_unix_millis,
            c.facts_json.clone(),
            c.conditions.clone(),
        )
    };
    assert_eq!(
        clusters.iter().map(row).collect::<Vec<_>>(),
        [
            ("c1".into(), 3, 50, Some("{}".into()), vec![diverged.clone()]),
            ("c2".into(), 2, 40, None, vec![]),
        ]
    );
    assert_eq!(store.agents("c1").await.unwrap(), [agent("a", "x")]);

    // A late report keeps last_seen where it was; fields it does not hold are kept; an empty list clears conditions.
    store
        .record_reports(&[ClusterReport {
            id: "c1".into(),
            conditions: Some(vec![]),
            last_seen_unix_millis: 10,
            ..ClusterReport::default()
        }])
        .await
        .unwrap();
    let c1 = store.clusters().await.unwrap().remove(0);
    assert_eq!(row(&c1), ("c1".into(), 3, 50, Some("{}".into()), vec![]));
    assert_eq!(store.agents("c1").await.unwrap(), [agent("a", "x")]);
}

async fn adoption_requests_are_set_read_and_cleared_per_cluster(backend: Backend) {
    let (store, fixture) = open(backend).await;
    assert!(
        !store.request_adopt("ghost").await.unwrap(),
        "an unregistered cluster is not adopted"
    );
    join(&store, "c1", &BTreeMap::new(), 1).await.unwrap();
    join(&store, "c2", &BTreeMap::new(), 1).await.unwrap();
    assert!(!store.adopt_requested("c1").await.unwrap());
    assert!(store.request_adopt("c1").await.unwrap());
    assert!(store.adopt_requested("c1").await.unwrap());
    assert!(!store.adopt_requested("c2").await.unwrap());
    // A hello says so too.
    let hello = store.hello("c1", &BTreeMap::new(), 0, 2).await.unwrap().unwrap();
    assert!(hello.adopt_requested);
    assert!(
        !store
            .hello("c2", &BTreeMap::new(), 0, 2)
            .await
            .unwrap()
            .unwrap()
            .adopt_requested
    );
    // Survives a restart, and shows in the cluster's record.
    let store = fixture.reopen().await;
    let flags = |clusters: Vec<ClusterRecord>| clusters.into_iter().map(|c| c.adopt_requested).collect::<Vec<_>>();
    assert_eq!(flags(store.clusters().await.unwrap()), [true, false]);
    store.clear_adopt("c1").await.unwrap();
    assert!(!store.adopt_requested("c1").await.unwrap());
    assert_eq!(flags(store.clusters().await.unwrap()), [false, false]);
}

async fn hellos_of_many_clusters_are_one_call_with_one_answer_each(backend: Backend) {
    let (store, _fixture) = open(backend).await;
    for (id, env) in [("a", "prod"), ("b", "dev")] {
        store.register_cluster(id, &labels(&[("env", env)]), 1).await.unwrap();
    }
    let hello = |id: &str, reported: &str, not_after: i64| Hello {
        id: id.to_string(),
        reported: labels(&[("env", reported)]),
        certificate_not_after_unix_millis: not_after,
    };
    let answers = store
        .hellos(&[hello("b", "x", 7), hello("ghost", "y", 0), hello("a", "z", 9)], 50)
        .await
        .unwrap();
    let ids: Vec<Option<(&str, &str)>> = answers
        .iter()
        .map(|r| r.as_ref().map(|r| (r.id.as_str(), r.labels["env"].as_str())))
        .collect();
    assert_eq!(
        ids,
        [Some(("b", "dev")), None, Some(("a", "prod"))],
        "in order, the registry's labels"
    );
    let clusters = store.clusters().await.unwrap();
    assert_eq!(clusters.len(), 2, "an unregistered id creates nothing");
    for (cluster, reported, not_after) in [(&clusters[0], "z", 9), (&clusters[1], "x", 7)] {
        assert_eq!(cluster.reported_labels, labels(&[("env", reported)]));
        assert_eq!(cluster.certificate_not_after_unix_millis, not_after);
        assert_eq!(cluster.last_seen_unix_millis, 50);
    }
    assert!(store.hellos(&[], 60).await.unwrap().is_empty());
}

/// The embedded store's backup and restore (`tollgate-hub store backup | restore`).
mod backups {
    use std::path::Path;

    use rusqlite::Connection;
    use tollgate_hub::server::store::backup::*;
    use tollgate_hub::server::store::sqlite::{DATABASE_FILE, lock_data_dir};
    use tollgate_hub::server::store::{Operation, SqliteStore, Store};

    use super::{policy, set_of};

    async fn store_with_revisions(dir: &Path, revisions: u64) -> SqliteStore {
        let store = SqliteStore::open(dir).unwrap();
        for number in 1..=revisions {
            store
                .commit(
                    number - 1,
                    Operation::Apply,
                    &format!("r{number}"),
                    "alice",
                    &set_of([policy(&format!("p{number}"))]),
                    1,
                )
                .await
                .unwrap();
        }
        store
    }

    #[tokio::test]
    async fn a_backup_taken_while_the_store_is_open_restores_every_revision_and_the_store_id() {
        let source = tempfile::tempdir().unwrap();
        let store = store_with_revisions(source.path(), 2).await;
        let copies = tempfile::tempdir().unwrap();
        let file = copies.path().join("hub.db");
        let summary = backup(source.path(), &file).unwrap();
        assert_eq!((summary.latest_revision, summary.revisions), (2, 2));
        assert_eq!(summary.store_id, store.store_id());
        // Later changes are not in the backup.
        store
            .commit(2, Operation::Apply, "r3", "alice", &set_of([policy("p3")]), 1)
            .await
            .unwrap();
        let again = backup(source.path(), &file).unwrap_err().to_string();
        assert!(again.contains("a backup never overwrites a file"), "{again}");

        let target = tempfile::tempdir().unwrap();
        let restored = restore(&target.path().join("data"), &file, false, 7).unwrap();
        assert_eq!(restored.replaced, None);
        let reopened = SqliteStore::open(&target.path().join("data")).unwrap();
        assert_eq!(reopened.store_id(), store.store_id());
        let latest = reopened.latest().await.unwrap();
        assert_eq!(latest.info.number, 2);
        assert_eq!(latest.documents, set_of([policy("p2")]));
        assert_eq!(reopened.history().await.unwrap().len(), 2);
    }

    #[tokio::test]
    async fn a_restore_replaces_a_store_only_when_forced_and_keeps_the_replaced_one() {
        let source = tempfile::tempdir().unwrap();
        drop(store_with_revisions(source.path(), 1).await);
        let file = tempfile::tempdir().unwrap();
        let backup_file = file.path().join("hub.db");
        backup(source.path(), &backup_file).unwrap();

        let target = tempfile::tempdir().unwrap();
        let current = store_with_revisions(target.path(), 3).await;
        let current_id = current.store_id().to_string();
        drop(current);
        let refused = restore(target.path(), &backup_file, false, 7).unwrap_err().to_string();
        assert!(refused.contains("already has a store (store "), "{refused}");
        assert!(refused.contains("latest revision 3"), "{refused}");
        assert!(refused.contains("--force replaces it"), "{refused}");
        assert_eq!(
            SqliteStore::open(target.path())
                .unwrap()
                .latest()
                .await
                .unwrap()
                .info
                .number,
            3,
            "unchanged"
        );

        let restored = restore(target.path(), &backup_file, true, 7).unwrap();
        let kept = restored.replaced.unwrap();
        assert_eq!(kept, target.path().join("tollgate-hub.db.replaced-7"));
        let kept = inspect(&kept).unwrap();
        assert_eq!((kept.store_id.as_str(), kept.latest_revision), (current_id.as_str(), 3));
        assert_eq!(
            SqliteStore::open(target.path())
                .unwrap()
                .latest()
                .await
                .unwrap()
                .info
                .number,
            1
        );
    }

    #[tokio::test]
    async fn a_restore_is_refused_while_a_hub_serves_the_folder_and_for_files_that_are_not_stores() {
        let source = tempfile::tempdir().unwrap();
        drop(store_with_revisions(source.path(), 1).await);
        let file = tempfile::tempdir().unwrap();
        let backup_file = file.path().join("hub.db");
        backup(source.path(), &backup_file).unwrap();

        let target = tempfile::tempdir().unwrap();
        let serving = lock_data_dir(target.path()).unwrap();
        let refused = restore(target.path(), &backup_file, true, 7).unwrap_err().to_string();
        assert!(refused.contains("is in use by another process"), "{refused}");
        assert!(!target.path().join(DATABASE_FILE).exists(), "nothing written");
        drop(serving);

        let garbage = file.path().join("garbage.db");
        std::fs::write(&garbage, b"not a database at all, just some bytes of text").unwrap();
        let refused = restore(target.path(), &garbage, true, 7).unwrap_err().to_string();
        assert!(refused.contains("is not a Tollgate hub store"), "{refused}");
        let empty = file.path().join("empty.db");
        Connection::open(&empty)
            .unwrap()
            .execute_batch("CREATE TABLE t (x)")
            .unwrap();
        let refused = restore(target.path(), &empty, true, 7).unwrap_err().to_string();
        assert!(
            refused.contains("is not a Tollgate hub store: no such table: schema_migrations"),
            "{refused}"
        );
        assert!(!target.path().join(DATABASE_FILE).exists(), "nothing written");

        let missing = backup(target.path(), &file.path().join("x.db"))
            .unwrap_err()
            .to_string();
        assert!(missing.contains("holds no store"), "{missing}");
    }
}
