//! One driver at a time: a saga's lease (taken in one UPDATE, renewed before every gateway
//! call, released after) and this process's liveness lock, which frees every lease the
//! process held the moment it dies.

use std::time::{Duration, Instant};

use sqlx::{Connection, PgConnection};
use tracing::Instrument;
use uuid::Uuid;

use crate::Result;

use super::{PaymentView, Payments};

/// Namespace ("dhmn") of the session-level advisory locks that say a lease's owner
/// process is alive: `(LIVENESS_LOCKS, payment_sagas.lease_lock)`.
pub(super) const LIVENESS_LOCKS: i32 = 0x6468_6d6e;

/// What the lease adds to the gateway client's [`GatewayClient::call_budget`]: the
/// database round trips between renewing it and the call, and after the call.
pub(super) const LEASE_MARGIN: Duration = Duration::from_secs(5);

/// How long a liveness connection that answered is trusted without asking again.
pub(super) const LIVENESS_CHECK: Duration = Duration::from_secs(1);

/// One `drive`'s hold on a saga: `lease_owner` is this drive's alone, so a drive that
/// lost the lease (it lapsed and another took it) cannot renew or release the other's.
pub(super) struct Lease {
    owner: String,
}

/// This process's proof of life: a connection outside the pool holding the advisory lock
/// `(LIVENESS_LOCKS, key)` for as long as it lives. When the process dies the connection
/// closes and Postgres drops the lock, which frees every lease the process held at once.
pub(super) struct Liveness {
    key: i32,
    conn: Option<PgConnection>,
    checked: Option<Instant>,
}

impl Liveness {
    pub(super) fn new() -> Self {
        Liveness {
            key: liveness_key(),
            conn: None,
            checked: None,
        }
    }
}

fn liveness_key() -> i32 {
    // Positive, so it casts to an `oid` (what `pg_locks.objid` is) unchanged.
    (Uuid::new_v4().as_u128() as u32 & 0x7fff_ffff) as i32
}

impl Payments {
    /// Takes the saga as far as it can go now; answers its state then.
    pub(super) async fn drive(&self, id: Uuid) -> Result<PaymentView> {
        Ok(self.try_drive(id).await?.0)
    }

    /// Takes the saga's lease, advances it and releases the lease; answers its state then,
    /// and whether this driver held the lease. A driver that cannot take it (another one
    /// holds it) calls nothing and answers the state as it is: in flight.
    pub(super) async fn try_drive(&self, id: Uuid) -> Result<(PaymentView, bool)> {
        let Some(lease) = self.take_lease(id).await? else {
            return Ok((self.view_by_id(id).await?, false));
        };
        let advanced = self.advance_leased(id, &lease).await;
        let released = self.release(id, &lease).await;
        advanced?;
        released?;
        Ok((self.view_by_id(id).await?, true))
    }

    pub(super) async fn advance_leased(&self, id: Uuid, lease: &Lease) -> Result<()> {
        let saga = self.load(id).await?;
        let span =
            tracing::info_span!("saga", payment_id = %id, correlation_id = %saga.correlation_id);
        self.advance(saga, lease).instrument(span).await
    }

    /// Takes the lease when the saga has work left (unfinished, or a late charge to
    /// refund) and the lease is free: released, lapsed, or held by a process that is gone
    /// (its liveness lock is not held). One UPDATE, so two drivers never both get it.
    pub(super) async fn take_lease(&self, id: Uuid) -> Result<Option<Lease>> {
        let key = self.alive().await?;
        let lease = Lease {
            owner: format!("{}:{}", std::process::id(), Uuid::now_v7()),
        };
        let taken: Option<(Uuid,)> = sqlx::query_as(
            "update payment_sagas s
                set lease_owner = $2, lease_lock = $3,
                    lease_until = now() + make_interval(secs => $4)
              where s.id = $1
                and (s.state in ('started', 'charging', 'charged')
                     or (s.late_charge_id is not null and s.late_refund_id is null))
                and (s.lease_until is null or s.lease_until <= now()
                     or not exists (
                        select 1 from pg_locks l
                         where l.locktype = 'advisory' and l.granted and l.objsubid = 2
                           and l.database = (select oid from pg_database
                                              where datname = current_database())
                           and l.classid = ($5::int4)::oid and l.objid = s.lease_lock::oid))
              returning s.id",
        )
        .bind(id)
        .bind(&lease.owner)
        .bind(key)
        .bind(self.inner.lease.as_secs_f64())
        .bind(LIVENESS_LOCKS)
        .fetch_optional(&self.inner.pool)
        .await?;
        Ok(taken.map(|_| lease))
    }

    /// Extends the lease by a full term before a gateway call; `false` when this driver
    /// no longer holds it (it lapsed and another driver took it): then it must not call.
    pub(super) async fn renew(&self, id: Uuid, lease: &Lease) -> Result<bool> {
        let renewed = sqlx::query(
            "update payment_sagas set lease_until = now() + make_interval(secs => $3)
              where id = $1 and lease_owner = $2",
        )
        .bind(id)
        .bind(&lease.owner)
        .bind(self.inner.lease.as_secs_f64())
        .execute(&self.inner.pool)
        .await?
        .rows_affected();
        if renewed == 0 {
            tracing::warn!(payment_id = %id, "the saga's lease was lost; leaving it to its holder");
        }
        Ok(renewed == 1)
    }

    pub(super) async fn release(&self, id: Uuid, lease: &Lease) -> Result<()> {
        sqlx::query(
            "update payment_sagas set lease_owner = null, lease_until = null, lease_lock = null
              where id = $1 and lease_owner = $2",
        )
        .bind(id)
        .bind(&lease.owner)
        .execute(&self.inner.pool)
        .await?;
        Ok(())
    }

    /// This process's liveness key, its lock held (taken, or taken again on a new
    /// connection when the last one broke).
    pub(super) async fn alive(&self) -> Result<i32> {
        let mut guard = self.inner.liveness.lock().await;
        let live = &mut *guard;
        if let Some(conn) = live.conn.as_mut() {
            if live.checked.is_some_and(|at| at.elapsed() < LIVENESS_CHECK) {
                return Ok(live.key);
            }
            if conn.ping().await.is_ok() {
                live.checked = Some(Instant::now());
                return Ok(live.key);
            }
            tracing::warn!("the payment saga's liveness connection broke; taking its lock again");
            live.conn = None;
        }
        loop {
            let mut conn = self.inner.pool.acquire().await?.detach();
            let (got,): (bool,) = sqlx::query_as("select pg_try_advisory_lock($1, $2)")
                .bind(LIVENESS_LOCKS)
                .bind(live.key)
                .fetch_one(&mut conn)
                .await?;
            if got {
                live.conn = Some(conn);
                live.checked = Some(Instant::now());
                return Ok(live.key);
            }
            // Another live process drew the same key: draw again.
            let _ = conn.close().await;
            live.key = liveness_key();
        }
    }
}
