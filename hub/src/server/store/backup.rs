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
