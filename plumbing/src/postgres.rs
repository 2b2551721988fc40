//! Sessions beside a pool: on the same database, waited for as long, but not counted among
//! its connections. A part that holds a session for its whole life (a `LISTEN`, a writer's
//! prepared statement) or must not wait behind another part's work takes them here, so
//! that `DHANMAN_DB_POOL` stays the connections a process works with.

use sqlx::PgPool;
use sqlx::postgres::{PgConnectOptions, PgListener, PgPoolOptions};

/// A pool of `size` sessions (at least one) on `pool`'s database, each opened with
/// `options` when first needed and waited for as long as `pool`'s.
pub fn pool_beside(pool: &PgPool, size: u32, options: PgConnectOptions) -> PgPool {
    PgPoolOptions::new()
        .max_connections(size.max(1))
        .acquire_timeout(pool.options().get_acquire_timeout())
        .connect_lazy_with(options)
}

/// A pool as large as `pool`, its sessions opened as `pool`'s are.
pub fn twin(pool: &PgPool) -> PgPool {
    let options = (*pool.connect_options()).clone();
    pool_beside(pool, pool.options().get_max_connections(), options)
}

/// A listener on `pool`'s database on a session of its own (kept, and opened again after a
/// failure, for as long as the listener lives): taken from `pool`, it would leave the pool
/// one connection short for good, and a pool of one with none.
pub async fn listener(pool: &PgPool) -> sqlx::Result<PgListener> {
    let own = pool_beside(pool, 1, (*pool.connect_options()).clone());
    PgListener::connect_with(&own).await
}

/// Whether `e` is the database's state of the moment rather than the statement's fault, so
/// that the same transaction may succeed later: a connection lost or not had in time, and
/// the SQLSTATE classes of connection errors (08), serialization failures and deadlocks
/// (40), resources short (53), an operator's intervention (57) and system errors (58).
pub fn is_transient(e: &sqlx::Error) -> bool {
    match e {
        sqlx::Error::Io(_)
        | sqlx::Error::Tls(_)
        | sqlx::Error::Protocol(_)
        | sqlx::Error::PoolTimedOut
        | sqlx::Error::PoolClosed
        | sqlx::Error::WorkerCrashed => true,
        _ => in_classes(e, &["08", "40", "53", "57", "58"]),
    }
}

/// Whether `e` is a database error whose SQLSTATE is of one of `classes` (its first two
/// characters).
pub fn in_classes(e: &sqlx::Error, classes: &[&str]) -> bool {
    match e {
        sqlx::Error::Database(db) => db
            .code()
            .and_then(|code| code.get(..2).map(|class| classes.contains(&class)))
            .unwrap_or(false),
        _ => false,
    }
}
