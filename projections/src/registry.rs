//! The registry: per projection, the serving generation with its version,
//! the generation being built, if any, and one checkpoint per generation
//! and log partition.
//!
//! A projection's tables are physical tables per generation
//! (`{table}_g{n}`); a view named `{table}` points at the serving one and is
//! replaced, with the registry row, in the swap transaction. Generation 0 of
//! version 0 is the empty placeholder installed before anything is built.
//!
//! Checkpoints are rows of `spool_projection_checkpoints`, keyed by
//! (projection, generation, partition): a batch of one partition moves only
//! that partition's row, in the transaction that wrote its rows, so runners
//! applying different partitions never write the same row. A partition
//! without a row is at position zero. A swap only moves the registry's
//! `generation`: the build's rows become the serving checkpoint as they are.

use spool_log::Cursor;
use spool_schemas::Position;
use sqlx::Row;

use crate::projection::physical_name;
use crate::views::{Backend, Connection, Views};
use crate::{Error, Projection, Result};

const CREATE: [&str; 3] = [
    "CREATE TABLE IF NOT EXISTS spool_projections (
        name             TEXT PRIMARY KEY,
        version          BIGINT NOT NULL,
        generation       BIGINT NOT NULL,
        build_version    BIGINT,
        build_generation BIGINT,
        error            TEXT
    )",
    "CREATE TABLE IF NOT EXISTS spool_projection_tables (
        projection TEXT NOT NULL,
        generation BIGINT NOT NULL,
        name       TEXT NOT NULL,
        PRIMARY KEY (projection, generation, name)
    )",
    "CREATE TABLE IF NOT EXISTS spool_projection_checkpoints (
        projection    TEXT NOT NULL,
        generation    BIGINT NOT NULL,
        log_partition BIGINT NOT NULL,
        position      BIGINT NOT NULL,
        PRIMARY KEY (projection, generation, log_partition)
    )",
];

/// What the registry holds about one projection.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Stored {
    /// The serving version; 0 until the first build is swapped in.
    pub(crate) version: u32,
    pub(crate) generation: u64,
    pub(crate) build: Option<Build>,
    /// Why the projection last stopped, until it next starts.
    pub(crate) error: Option<String>,
}

/// A generation being built in shadow tables.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Build {
    pub(crate) version: u32,
    pub(crate) generation: u64,
}

pub(crate) async fn create(views: &Views) -> Result<()> {
    for statement in CREATE {
        sqlx::query(statement).execute(views.pool()).await?;
    }
    migrate_single_checkpoints(views).await
}

/// Stores written before the log was partitioned kept one checkpoint per
/// projection in `spool_projections.checkpoint` (and `build_checkpoint`);
/// those were positions of the one partition there was, so they become
/// partition 0's rows. Only SQLite files can be that old, so this alone
/// reads SQLite's catalog.
async fn migrate_single_checkpoints(views: &Views) -> Result<()> {
    if views.backend() != Backend::Sqlite {
        return Ok(());
    }
    let mut write = views.write().await?;
    let connection = write.connection();
    let old_columns: i64 = sqlx::query_scalar(
        "SELECT COUNT(*) FROM pragma_table_info('spool_projections') \
         WHERE name IN ('checkpoint', 'build_checkpoint')",
    )
    .fetch_one(&mut *connection)
    .await?;
    if old_columns == 0 {
        return Ok(());
    }
    tracing::info!("moving the read models' checkpoints to one row per partition");
    for statement in [
        "INSERT INTO spool_projection_checkpoints (projection, generation, log_partition, position) \
         SELECT name, generation, 0, checkpoint FROM spool_projections WHERE checkpoint > 0 \
         ON CONFLICT (projection, generation, log_partition) DO NOTHING",
        "INSERT INTO spool_projection_checkpoints (projection, generation, log_partition, position) \
         SELECT name, build_generation, 0, build_checkpoint FROM spool_projections \
         WHERE build_generation IS NOT NULL AND build_checkpoint > 0 \
         ON CONFLICT (projection, generation, log_partition) DO NOTHING",
        "ALTER TABLE spool_projections DROP COLUMN checkpoint",
        "ALTER TABLE spool_projections DROP COLUMN build_checkpoint",
    ] {
        sqlx::query(statement).execute(&mut *connection).await?;
    }
    write.commit().await
}

/// Installs an empty placeholder generation of `projection` if it has none.
pub(crate) async fn install(views: &Views, projection: &dyn Projection) -> Result<()> {
    if load(views, projection.name()).await?.is_some() {
        return Ok(());
    }
    let mut write = views.write().await?;
    let connection = write.connection();
    // Checked again under the writer's turn: another task may have won.
    if load_with(&mut *connection, projection.name()).await?.is_none() {
        create_generation(connection, projection, 0).await?;
        point_views(connection, projection, 0).await?;
        sqlx::query(
            "INSERT INTO spool_projections (name, version, generation) VALUES ($1, 0, 0) \
             ON CONFLICT (name) DO NOTHING",
        )
        .bind(projection.name())
        .execute(&mut *connection)
        .await?;
    }
    write.commit().await
}

pub(crate) async fn load(views: &Views, name: &str) -> Result<Option<Stored>> {
    let mut connection = views.pool().acquire().await?;
    load_with(&mut connection, name).await
}

async fn load_with(connection: &mut Connection, name: &str) -> Result<Option<Stored>> {
    let row = sqlx::query(
        "SELECT version, generation, build_version, build_generation, error \
         FROM spool_projections WHERE name = $1",
    )
    .bind(name)
    .fetch_optional(connection)
    .await?;
    let Some(row) = row else { return Ok(None) };
    let build_version: Option<i64> = row.try_get(2)?;
    let build_generation: Option<i64> = row.try_get(3)?;
    let build = match (build_version, build_generation) {
        (Some(version), Some(generation)) => {
            Some(Build { version: version as u32, generation: generation as u64 })
        }
        _ => None,
    };
    Ok(Some(Stored {
        version: row.try_get::<i64, _>(0)? as u32,
        generation: row.try_get::<i64, _>(1)? as u64,
        build,
        error: row.try_get(4)?,
    }))
}

/// The checkpoint of one generation of a projection, as a cursor over the
/// `partitions` partitions of the log.
pub(crate) async fn checkpoint(
    views: &Views,
    name: &str,
    generation: u64,
    partitions: u32,
) -> Result<Cursor> {
    let rows: Vec<(i64, i64)> = sqlx::query_as(
        "SELECT log_partition, position FROM spool_projection_checkpoints \
         WHERE projection = $1 AND generation = $2",
    )
    .bind(name)
    .bind(generation as i64)
    .fetch_all(views.pool())
    .await?;
    let mut cursor = Cursor::start(partitions);
    for (partition, position) in rows {
        if partition < 0 || partition >= i64::from(partitions) {
            return Err(Error::Corrupt {
                table: "spool_projection_checkpoints",
                message: format!(
                    "{name} generation {generation} has a checkpoint in partition {partition}, \
                     but the log has {partitions} partitions: were these read models built \
                     from another log?"
                ),
            });
        }
        cursor.set(partition as u32, Position(position as u64));
    }
    Ok(cursor)
}

/// Starts a new build of `projection` in fresh, empty tables, discarding any
/// unfinished earlier build.
pub(crate) async fn start_build(views: &Views, projection: &dyn Projection) -> Result<Build> {
    let mut write = views.write().await?;
    let connection = write.connection();
    let stored = load_with(&mut *connection, projection.name())
        .await?
        .ok_or(Error::NotInstalled(projection.name()))?;
    let mut generation = stored.generation + 1;
    if let Some(stale) = stored.build {
        drop_generation(connection, projection.name(), stale.generation, false).await?;
        generation = generation.max(stale.generation + 1);
    }
    create_generation(connection, projection, generation).await?;
    let build = Build { version: projection.version(), generation };
    sqlx::query(
        "UPDATE spool_projections SET build_version = $1, build_generation = $2 WHERE name = $3",
    )
    .bind(i64::from(build.version))
    .bind(build.generation as i64)
    .bind(projection.name())
    .execute(&mut *connection)
    .await?;
    write.commit().await?;
    Ok(build)
}

/// Drops an unfinished build and its tables, keeping the serving
/// generation: for a build of the version that already serves (an
/// interrupted `spool projections rebuild`), which nothing will resume.
pub(crate) async fn discard_build(views: &Views, projection: &dyn Projection) -> Result<()> {
    let mut write = views.write().await?;
    let connection = write.connection();
    let stored = load_with(&mut *connection, projection.name())
        .await?
        .ok_or(Error::NotInstalled(projection.name()))?;
    let Some(stale) = stored.build else {
        return Ok(());
    };
    drop_generation(connection, projection.name(), stale.generation, false).await?;
    sqlx::query(
        "UPDATE spool_projections SET build_version = NULL, build_generation = NULL \
         WHERE name = $1",
    )
    .bind(projection.name())
    .execute(&mut *connection)
    .await?;
    write.commit().await
}

/// Moves the checkpoint of `partition` in `generation` from `from` to `to`;
/// called inside the transaction that wrote the rows of the events between.
///
/// Fails with [`Error::CheckpointMoved`] when the stored checkpoint is not
/// at `from`: then something else applied (some of) these events already,
/// and committing would count them twice.
pub(crate) async fn advance(
    connection: &mut Connection,
    name: &'static str,
    generation: u64,
    partition: u32,
    from: Position,
    to: Position,
) -> Result<()> {
    // A partition without a row is at position zero, so the first batch
    // inserts it; later batches update it only where it still is at `from`.
    let moved = if from == Position::ZERO {
        sqlx::query(
            "INSERT INTO spool_projection_checkpoints \
             (projection, generation, log_partition, position) VALUES ($1, $2, $3, $4) \
             ON CONFLICT (projection, generation, log_partition) DO UPDATE SET position = $4 \
             WHERE spool_projection_checkpoints.position = 0",
        )
        .bind(name)
        .bind(generation as i64)
        .bind(i64::from(partition))
        .bind(to.0 as i64)
    } else {
        sqlx::query(
            "UPDATE spool_projection_checkpoints SET position = $4 \
             WHERE projection = $1 AND generation = $2 AND log_partition = $3 AND position = $5",
        )
        .bind(name)
        .bind(generation as i64)
        .bind(i64::from(partition))
        .bind(to.0 as i64)
        .bind(from.0 as i64)
    }
    .execute(connection)
    .await?;
    if moved.rows_affected() != 1 {
        return Err(Error::CheckpointMoved { projection: name, partition, expected: from });
    }
    Ok(())
}

/// Makes the build the serving generation, in one transaction: the views
/// point at its tables, the registry row moves (and with it the checkpoint,
/// which is the build's rows), the old tables and checkpoints go.
pub(crate) async fn swap(views: &Views, projection: &dyn Projection, build: Build) -> Result<()> {
    let mut write = views.write().await?;
    let connection = write.connection();
    let stored = load_with(&mut *connection, projection.name())
        .await?
        .ok_or(Error::NotInstalled(projection.name()))?;
    drop_generation(connection, projection.name(), stored.generation, true).await?;
    point_views(connection, projection, build.generation).await?;
    sqlx::query(
        "UPDATE spool_projections SET version = $1, generation = $2, \
         build_version = NULL, build_generation = NULL WHERE name = $3",
    )
    .bind(i64::from(build.version))
    .bind(build.generation as i64)
    .bind(projection.name())
    .execute(&mut *connection)
    .await?;
    write.commit().await
}

/// Records why a projection stopped (`Some`) or that it runs again (`None`).
pub(crate) async fn set_error(views: &Views, name: &str, error: Option<&str>) -> Result<()> {
    let mut write = views.write().await?;
    sqlx::query("UPDATE spool_projections SET error = $1 WHERE name = $2")
        .bind(error)
        .bind(name)
        .execute(write.connection())
        .await?;
    write.commit().await
}

async fn create_generation(
    connection: &mut Connection,
    projection: &dyn Projection,
    generation: u64,
) -> Result<()> {
    // A crash between creating and registering leaves tables (and perhaps
    // checkpoints) behind; this generation number is ours now, so they are
    // ours to replace.
    delete_checkpoints(connection, projection.name(), generation).await?;
    for table in projection.tables() {
        let physical = physical_name(table.name, generation);
        sqlx::query(&format!("DROP TABLE IF EXISTS {physical}")).execute(&mut *connection).await?;
        for statement in table.statements(&physical) {
            sqlx::query(&statement).execute(&mut *connection).await?;
        }
        sqlx::query(
            "INSERT INTO spool_projection_tables (projection, generation, name) \
             VALUES ($1, $2, $3) ON CONFLICT (projection, generation, name) DO NOTHING",
        )
        .bind(projection.name())
        .bind(generation as i64)
        .bind(table.name)
        .execute(&mut *connection)
        .await?;
    }
    Ok(())
}

/// Drops the tables of one generation, and with `serving` their views, by
/// what was registered, so tables an older version had and the current code
/// no longer names go too; and the generation's checkpoints.
async fn drop_generation(
    connection: &mut Connection,
    name: &str,
    generation: u64,
    serving: bool,
) -> Result<()> {
    let tables: Vec<String> = sqlx::query_scalar(
        "SELECT name FROM spool_projection_tables WHERE projection = $1 AND generation = $2",
    )
    .bind(name)
    .bind(generation as i64)
    .fetch_all(&mut *connection)
    .await?;
    for table in tables {
        if serving {
            // The caller points the views of the current tables anew.
            sqlx::query(&format!("DROP VIEW IF EXISTS {table}")).execute(&mut *connection).await?;
        }
        let physical = physical_name(&table, generation);
        sqlx::query(&format!("DROP TABLE IF EXISTS {physical}")).execute(&mut *connection).await?;
    }
    sqlx::query("DELETE FROM spool_projection_tables WHERE projection = $1 AND generation = $2")
        .bind(name)
        .bind(generation as i64)
        .execute(&mut *connection)
        .await?;
    delete_checkpoints(connection, name, generation).await
}

async fn delete_checkpoints(
    connection: &mut Connection,
    name: &str,
    generation: u64,
) -> Result<()> {
    sqlx::query(
        "DELETE FROM spool_projection_checkpoints WHERE projection = $1 AND generation = $2",
    )
    .bind(name)
    .bind(generation as i64)
    .execute(&mut *connection)
    .await?;
    Ok(())
}

async fn point_views(
    connection: &mut Connection,
    projection: &dyn Projection,
    generation: u64,
) -> Result<()> {
    for table in projection.tables() {
        let physical = physical_name(table.name, generation);
        sqlx::query(&format!("DROP VIEW IF EXISTS {}", table.name))
            .execute(&mut *connection)
            .await?;
        sqlx::query(&format!("CREATE VIEW {} AS SELECT * FROM {physical}", table.name))
            .execute(&mut *connection)
            .await?;
    }
    Ok(())
}
