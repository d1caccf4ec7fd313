//! A schema of its own in the PostgreSQL of `SPOOL_TEST_POSTGRES` for a
//! test's read models, so that tests running at the same time never see
//! each other's tables; dropped with everything in it.

use spool_schemas::EventId;
use sqlx::Connection;

pub struct Schema {
    server: String,
    name: String,
}

impl Schema {
    pub async fn create() -> Schema {
        let server = std::env::var("SPOOL_TEST_POSTGRES").unwrap_or_else(|_| {
            panic!(
                "SPOOL_TEST_POSTGRES is not set, so the PostgreSQL API tests cannot run. Run \
                 ./scripts/test, which starts PostgreSQL and sets it, or set it to a database \
                 these tests may create schemas in, such as \
                 postgres://postgres@127.0.0.1:5432/test"
            )
        });
        // Unique across processes and runs: a fresh UUIDv7's hex digits.
        let name = format!("spool_api_test_{}", &EventId::new().to_string()[4..]);
        let mut connection = sqlx::PgConnection::connect(&server)
            .await
            .unwrap_or_else(|error| panic!("cannot connect to {server}: {error}"));
        sqlx::query(&format!("CREATE SCHEMA {name}"))
            .execute(&mut connection)
            .await
            .expect("create schema");
        connection.close().await.expect("close");
        Schema { server, name }
    }

    /// The server's URL with this schema as every connection's search path.
    pub fn url(&self) -> String {
        let separator = if self.server.contains('?') { '&' } else { '?' };
        format!("{}{separator}options=-c%20search_path%3D{}", self.server, self.name)
    }
}

impl Drop for Schema {
    fn drop(&mut self) {
        // Drop runs outside async code (and during a panic too): a thread
        // of its own with a runtime of its own does the dropping.
        let (server, name) = (self.server.clone(), self.name.clone());
        let dropped = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime");
            runtime.block_on(async {
                let mut connection = sqlx::PgConnection::connect(&server).await?;
                // A connection of the test's pool may still hold a lock.
                sqlx::query("SET lock_timeout = '10s'").execute(&mut connection).await?;
                sqlx::query(&format!("DROP SCHEMA IF EXISTS {name} CASCADE"))
                    .execute(&mut connection)
                    .await?;
                connection.close().await
            })
        })
        .join();
        match dropped {
            Ok(Ok(())) => {}
            Ok(Err(error)) => eprintln!("could not drop schema {}: {error}", self.name),
            Err(_) => eprintln!("could not drop schema {}: the thread panicked", self.name),
        }
    }
}
