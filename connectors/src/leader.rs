//! One process of a deployment at a time: leadership through a session-level Postgres
//! advisory lock, held as long as its connection lives and released when that connection
//! closes or dies. The relay leads publishing with it; the API processes lead sampling.
//! A lock taken leaves the pool with its session (the pool may open another in its place),
//! so that leading costs the process none of the connections it works with.

use std::time::Duration;

use sqlx::{Connection, PgConnection, PgPool};

use crate::Result;

/// The relay: one publisher at a time, so records of one key leave in commit order.
pub const RELAY_LOCK: i64 = 0x6468_6d6e_7265_6c61; // "dhmnrela"
/// The deployment-wide gauges (lag, outbox backlog, dead-letter sizes) and the lag
/// samples: one API process records them, so they do not repeat per process.
pub const SAMPLER_LOCK: i64 = 0x6468_6d6e_7361_6d70; // "dhmnsamp"

/// A held lock, on a session of its own: dropping it closes the session, and the lock
/// goes with it.
pub struct Leadership {
    conn: PgConnection,
}

impl Leadership {
    /// Takes lock `key` if no other session holds it.
    pub async fn try_acquire(pool: &PgPool, key: i64) -> Result<Option<Self>> {
        let mut conn = pool.acquire().await?;
        let (got,): (bool,) = sqlx::query_as("select pg_try_advisory_lock($1)")
            .bind(key)
            .fetch_one(&mut *conn)
            .await?;
        Ok(got.then(|| Leadership {
            conn: conn.detach(),
        }))
    }

    /// Waits until lock `key` is this process's, asking every `poll`.
    pub async fn acquire(pool: &PgPool, key: i64, poll: Duration) -> Result<Self> {
        loop {
            if let Some(leadership) = Self::try_acquire(pool, key).await? {
                return Ok(leadership);
            }
            tokio::time::sleep(poll).await;
        }
    }

    /// Whether the lock is still held: an error means its connection is gone, and the
    /// lock with it (another process may hold it now).
    pub async fn check(&mut self) -> Result<()> {
        sqlx::query("select 1").execute(&mut self.conn).await?;
        Ok(())
    }

    /// Gives the lock up by closing its connection.
    pub async fn release(self) {
        let _ = self.conn.close().await;
    }
}
