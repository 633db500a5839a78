//! The store: reachable, migrated (opening applies the migrations, as every start does), and
//! writable — a block and its removal for a reserved app id, so nothing is left behind.

use super::Check;
use crate::config::{Config, Database};
use crate::domain::{AppId, UserId};
use crate::plan::Write;
use crate::store::Store;

const NAME: &str = "store";

pub async fn store(config: &Config) -> Check {
    let Some(backend) = &config.store else {
        return Check::ok(NAME, "off (DATABASE_URL=off): nothing is stored");
    };
    let label = match backend {
        Database::Sqlite { path } => format!("SQLite {path}"),
        Database::Postgres { .. } => "PostgreSQL".to_owned(),
    };
    let opened = tokio::time::timeout(std::time::Duration::from_secs(15), Store::open(backend)).await;
    let store = match opened {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => {
            let fix = match backend {
                Database::Sqlite { .. } => "the file's directory must exist and be writable by the engine's user",
                Database::Postgres { .. } => "is PostgreSQL running and reachable, and do the user, password and database of DATABASE_URL exist (`psql DATABASE_URL`)?",
            };
            return Check::failed(NAME, format!("{label}: {e}"), fix);
        }
        Err(_) => {
            return Check::failed(
                NAME,
                format!("{label}: no answer within 15 s"),
                "is the database reachable from here (host, port, firewall)?",
            )
        }
    };
    let id = "ids of letters and dashes are valid";
    let (app, user, other) = (
        AppId::parse("chat21-doctor").expect(id),
        UserId::parse("doctor").expect(id),
        UserId::parse("doctor-probe").expect(id),
    );
    let at_ms = crate::clock::now_ms();
    let block = |add| Write::Block {
        app: app.clone(),
        user: user.clone(),
        other: other.clone(),
        add,
        at_ms,
    };
    let (add, remove) = (block(true), block(false));
    let written = store.apply(&[&add, &remove]).await;
    store.close().await;
    match written {
        Ok(_) => Check::ok(NAME, format!("{label}: migrated, writable")),
        Err(e) => Check::failed(
            NAME,
            format!("{label}: migrated, but a write failed: {e}"),
            "the engine's database user needs INSERT/UPDATE/DELETE on its tables (SQLite: a writable file and directory)",
        ),
    }
}
