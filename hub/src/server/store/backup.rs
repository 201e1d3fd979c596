//! Backup and restore of the embedded store, for `tollgate-hub store backup | restore`.
//!
//! A backup is a consistent copy of the whole database (every revision, the store id, the clusters), taken with
//! SQLite's `VACUUM INTO` while the hub serves. A restore puts such a copy in place of a data folder's database
//! while no hub serves it (the folder's lock, [`super::sqlite::LOCK_FILE`], says so), after checking that the copy
//! is a Tollgate store this build can read; the database it replaces is kept beside it. A restored store keeps its
//! id, so spokes accept it — unless they enforce a newer revision than the backup holds: then they keep their
//! policies and report `Diverged` until an admin runs `tollgate-hub clusters adopt`.

use std::path::{Path, PathBuf};

use rusqlite::{Connection, OpenFlags};

use super::StoreError;
use super::sqlite::{DATABASE_FILE, MIGRATIONS, lock_data_dir};

/// What a backup file holds.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Summary {
    pub store_id: String,
    /// The newest revision number (0: nothing was ever applied).
    pub latest_revision: u64,
    pub revisions: u64,
    pub clusters: u64,
}

impl std::fmt::Display for Summary {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "store {}, latest revision {} (revisions kept: {}, clusters known: {})",
            self.store_id, self.latest_revision, self.revisions, self.clusters
        )
    }
}

fn backend(context: impl std::fmt::Display) -> impl FnOnce(rusqlite::Error) -> StoreError {
    move |error| StoreError::backend(context, error)
}

/// Writes a consistent copy of the store in `data_dir` to `out`, which must not exist. Works while a hub serves.
pub fn backup(data_dir: &Path, out: &Path) -> Result<Summary, StoreError> {
    let database = data_dir.join(DATABASE_FILE);
    if !database.is_file() {
        return Err(StoreError::Invalid(format!(
            "{} holds no store ({DATABASE_FILE} is missing)",
            data_dir.display()
        )));
    }
    if out.exists() {
        return Err(StoreError::Invalid(format!(
            "{} exists: a backup never overwrites a file",
            out.display()
        )));
    }
    let connection = Connection::open_with_flags(&database, OpenFlags::SQLITE_OPEN_READ_ONLY)
        .map_err(backend(format_args!("opening {}", database.display())))?;
    connection
        .busy_timeout(std::time::Duration::from_secs(10))
        .map_err(backend("setting the busy timeout"))?;
    let target = out
        .to_str()
        .ok_or_else(|| StoreError::Invalid(format!("{} is not UTF-8", out.display())))?;
    connection
        .execute("VACUUM INTO ?1", [target])
        .map_err(backend(format_args!(
            "copying {} to {}",
            database.display(),
            out.display()
        )))?;
    inspect(out)
}

/// Checks that `file` is a Tollgate store this build can read, and says what it holds.
pub fn inspect(file: &Path) -> Result<Summary, StoreError> {
    let not_a_store =
        |reason: String| StoreError::Invalid(format!("{} is not a Tollgate hub store: {reason}", file.display()));
    let connection =
        Connection::open_with_flags(file, OpenFlags::SQLITE_OPEN_READ_ONLY).map_err(|e| not_a_store(e.to_string()))?;
    let integrity: String = connection
        .query_row("PRAGMA integrity_check", [], |row| row.get(0))
        .map_err(|e| not_a_store(e.to_string()))?;
    if integrity != "ok" {
        return Err(not_a_store(format!("integrity check: {integrity}")));
    }
    let version: u32 = connection
        .query_row("SELECT COALESCE(MAX(version), 0) FROM schema_migrations", [], |row| {
            row.get(0)
        })
        .map_err(|e| not_a_store(e.to_string()))?;
    let known = MIGRATIONS.last().map_or(0, |(version, _)| *version);
    if version > known {
        return Err(StoreError::Invalid(format!(
            "{}: schema version {version} is newer than this hub supports ({known}); use a newer tollgate-hub",
            file.display()
        )));
    }
    let store_id: String = connection
        .query_row("SELECT value FROM store_meta WHERE key = 'store_id'", [], |row| {
            row.get(0)
        })
        .map_err(|e| not_a_store(format!("no store id ({e})")))?;
    let count = |sql: &str| -> Result<u64, StoreError> {
        let value: i64 = connection
            .query_row(sql, [], |row| row.get(0))
            .map_err(|e| not_a_store(e.to_string()))?;
        Ok(u64::try_from(value).unwrap_or(0))
    };
    Ok(Summary {
        store_id,
        latest_revision: count("SELECT COALESCE(MAX(number), 0) FROM revisions")?,
        revisions: count("SELECT COUNT(*) FROM revisions")?,
        clusters: count("SELECT COUNT(*) FROM clusters")?,
    })
}

/// What a restore did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Restored {
    pub summary: Summary,
    /// Where the database it replaced was kept, if there was one.
    pub replaced: Option<PathBuf>,
}

/// Puts the backup `from` in place as `data_dir`'s store. Refuses while a hub serves the folder, when `from` is not
/// a readable store, and, unless `replace`, when the folder already has a store. A replaced store is first copied,
/// consistently, to `tollgate-hub.db.replaced-<unix millis>` in the folder.
pub fn restore(data_dir: &Path, from: &Path, replace: bool, now_unix_millis: i64) -> Result<Restored, StoreError> {
    let summary = inspect(from)?;
    std::fs::create_dir_all(data_dir)
        .map_err(|e| StoreError::backend(format!("cannot create data folder {}", data_dir.display()), e))?;
    let _lock = lock_data_dir(data_dir)?;
    let database = data_dir.join(DATABASE_FILE);
    let mut replaced = None;
    if database.exists() {
        if !replace {
            let current = inspect(&database).map_or_else(|e| e.to_string(), |s| s.to_string());
            return Err(StoreError::Invalid(format!(
                "{} already has a store ({current}); --force replaces it (the current one is kept beside it)",
                data_dir.display()
            )));
        }
        let kept = data_dir.join(format!("{DATABASE_FILE}.replaced-{now_unix_millis}"));
        backup(data_dir, &kept)?;
        for suffix in ["", "-wal", "-shm"] {
            let file = data_dir.join(format!("{DATABASE_FILE}{suffix}"));
            match std::fs::remove_file(&file) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(StoreError::backend(format!("removing {}", file.display()), e)),
            }
        }
        replaced = Some(kept);
    }
    // Copied next to its final name, synced, then renamed: a crash leaves either no database or the whole backup.
    let partial = data_dir.join(format!("{DATABASE_FILE}.restoring"));
    let copy = || -> std::io::Result<()> {
        std::fs::copy(from, &partial)?;
        std::fs::File::open(&partial)?.sync_all()?;
        std::fs::rename(&partial, &database)?;
        std::fs::File::open(data_dir)?.sync_all()
    };
    copy().map_err(|e| StoreError::backend(format!("copying {} to {}", from.display(), database.display()), e))?;
    // Migrate it to this build's schema now, so that the hub starts on exactly what was checked.
    let mut connection =
        Connection::open(&database).map_err(backend(format_args!("opening {}", database.display())))?;
    super::sqlite::configure(&connection)?;
    super::sqlite::migrate(&mut connection)?;
    Ok(Restored { summary, replaced })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::server::store::tests::{policy, set_of};
    use crate::server::store::{Operation, SqliteStore, Store};

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
