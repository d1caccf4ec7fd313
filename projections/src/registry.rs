//! The registry: per projection, the serving generation with its version
//! and checkpoint, and the generation being built, if any.
//!
//! A projection's tables are physical tables per generation
//! (`{table}_g{n}`); a view named `{table}` points at the serving one and is
//! replaced, with the registry row, in the swap transaction. Generation 0 of
//! version 0 is the empty placeholder installed before anything is built.

use spool_schemas::Position;
use sqlx::Row;

use crate::projection::physical_name;
use crate::views::{Connection, Views};
use crate::{Error, Projection, Result};

const CREATE: [&str; 2] = [
    "CREATE TABLE IF NOT EXISTS spool_projections (
        name             TEXT PRIMARY KEY,
        version          INTEGER NOT NULL,
        generation       INTEGER NOT NULL,
        checkpoint       INTEGER NOT NULL,
        build_version    INTEGER,
        build_generation INTEGER,
        build_checkpoint INTEGER,
        error            TEXT
    )",
    "CREATE TABLE IF NOT EXISTS spool_projection_tables (
        projection TEXT NOT NULL,
        generation INTEGER NOT NULL,
        name       TEXT NOT NULL,
        PRIMARY KEY (projection, generation, name)
    )",
];

/// What the registry holds about one projection.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Stored {
    /// The serving version; 0 until the first build is swapped in.
    pub(crate) version: u32,
    pub(crate) generation: u64,
    pub(crate) checkpoint: Position,
    pub(crate) build: Option<Build>,
    /// Why the projection last stopped, until it next starts.
    pub(crate) error: Option<String>,
}

/// A generation being built in shadow tables.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Build {
    pub(crate) version: u32,
    pub(crate) generation: u64,
    pub(crate) checkpoint: Position,
}

pub(crate) async fn create(views: &Views) -> Result<()> {
    for statement in CREATE {
        sqlx::query(statement).execute(views.pool()).await?;
    }
    Ok(())
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
            "INSERT INTO spool_projections (name, version, generation, checkpoint) \
             VALUES (?, 0, 0, 0)",
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
        "SELECT version, generation, checkpoint, build_version, build_generation, \
         build_checkpoint, error FROM spool_projections WHERE name = ?",
    )
    .bind(name)
    .fetch_optional(connection)
    .await?;
    let Some(row) = row else { return Ok(None) };
    let build_version: Option<i64> = row.try_get(3)?;
    let build_generation: Option<i64> = row.try_get(4)?;
    let build_checkpoint: Option<i64> = row.try_get(5)?;
    let build = match (build_version, build_generation, build_checkpoint) {
        (Some(version), Some(generation), Some(checkpoint)) => Some(Build {
            version: version as u32,
            generation: generation as u64,
            checkpoint: Position(checkpoint as u64),
        }),
        _ => None,
    };
    Ok(Some(Stored {
        version: row.try_get::<i64, _>(0)? as u32,
        generation: row.try_get::<i64, _>(1)? as u64,
        checkpoint: Position(row.try_get::<i64, _>(2)? as u64),
        build,
        error: row.try_get(6)?,
    }))
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
    let build = Build { version: projection.version(), generation, checkpoint: Position::ZERO };
    sqlx::query(
        "UPDATE spool_projections SET build_version = ?, build_generation = ?, \
         build_checkpoint = 0 WHERE name = ?",
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
        "UPDATE spool_projections SET build_version = NULL, build_generation = NULL, \
         build_checkpoint = NULL WHERE name = ?",
    )
    .bind(projection.name())
    .execute(&mut *connection)
    .await?;
    write.commit().await
}

/// Moves the checkpoint of the serving generation (`building` false) or of
/// the build; called inside the transaction that wrote the rows.
pub(crate) async fn checkpoint(
    connection: &mut Connection,
    name: &str,
    position: Position,
    building: bool,
) -> Result<()> {
    let sql = if building {
        "UPDATE spool_projections SET build_checkpoint = ? WHERE name = ?"
    } else {
        "UPDATE spool_projections SET checkpoint = ? WHERE name = ?"
    };
    sqlx::query(sql).bind(position.0 as i64).bind(name).execute(connection).await?;
    Ok(())
}

/// Makes the build the serving generation, in one transaction: the views
/// point at its tables, the registry row moves, the old tables go.
pub(crate) async fn swap(views: &Views, projection: &dyn Projection, build: Build) -> Result<()> {
    let mut write = views.write().await?;
    let connection = write.connection();
    let stored = load_with(&mut *connection, projection.name())
        .await?
        .ok_or(Error::NotInstalled(projection.name()))?;
    drop_generation(connection, projection.name(), stored.generation, true).await?;
    point_views(connection, projection, build.generation).await?;
    sqlx::query(
        "UPDATE spool_projections SET version = ?, generation = ?, checkpoint = ?, \
         build_version = NULL, build_generation = NULL, build_checkpoint = NULL \
         WHERE name = ?",
    )
    .bind(i64::from(build.version))
    .bind(build.generation as i64)
    .bind(build.checkpoint.0 as i64)
    .bind(projection.name())
    .execute(&mut *connection)
    .await?;
    write.commit().await
}

/// Records why a projection stopped (`Some`) or that it runs again (`None`).
pub(crate) async fn set_error(views: &Views, name: &str, error: Option<&str>) -> Result<()> {
    let mut write = views.write().await?;
    sqlx::query("UPDATE spool_projections SET error = ? WHERE name = ?")
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
    for table in projection.tables() {
        let physical = physical_name(table.name, generation);
        // A crash between creating and registering leaves tables behind;
        // this generation number is ours now, so they are ours to replace.
        sqlx::query(&format!("DROP TABLE IF EXISTS {physical}")).execute(&mut *connection).await?;
        for statement in table.statements(&physical) {
            sqlx::query(&statement).execute(&mut *connection).await?;
        }
        sqlx::query(
            "INSERT INTO spool_projection_tables (projection, generation, name) VALUES (?, ?, ?) \
             ON CONFLICT (projection, generation, name) DO NOTHING",
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
/// no longer names go too.
async fn drop_generation(
    connection: &mut Connection,
    name: &str,
    generation: u64,
    serving: bool,
) -> Result<()> {
    let tables: Vec<String> = sqlx::query_scalar(
        "SELECT name FROM spool_projection_tables WHERE projection = ? AND generation = ?",
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
    sqlx::query("DELETE FROM spool_projection_tables WHERE projection = ? AND generation = ?")
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
