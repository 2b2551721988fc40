//! The raw limits the benchmark paths measure beside their own rates: a plain consumer's
//! read of a stage's topics, and a `COPY` of the rows a processor writes per event into
//! tables made like its own.

use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use rdkafka::TopicPartitionList;
use rdkafka::consumer::{Consumer, StreamConsumer};
use sqlx::{Connection, Executor};
use uuid::Uuid;

use super::common::{self, Common};
use super::pipeline::Stage;

/// The median rate of `common.runs()` runs of `measure` (which returns its seconds) over
/// `n` events.
pub async fn per_s<F, Fut>(common: &Common, n: usize, mut measure: F) -> anyhow::Result<f64>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = anyhow::Result<f64>>,
{
    let mut rates = Vec::new();
    for _ in 0..common.runs() {
        rates.push(n as f64 / measure().await?);
    }
    Ok(common::median(&rates))
}

/// Records/s a plain consumer reads the stage's `n` records at (median of the runs).
pub async fn consume_per_s(common: &Common, stage: &Stage, n: usize) -> anyhow::Result<f64> {
    per_s(common, n, || {
        consume(
            &common.kafka_bootstrap_servers,
            &stage.prefix,
            &stage.topics,
            n,
        )
    })
    .await
}

/// Reads every record of the topics from the beginning, touching only the payload length.
async fn consume(
    bootstrap: &str,
    prefix: &str,
    topics: &[String],
    expected: usize,
) -> anyhow::Result<f64> {
    let consumer: StreamConsumer = dhanman_plumbing::kafka::client_config(bootstrap)
        .set("group.id", format!("{prefix}raw-{}", Uuid::now_v7()))
        .set("enable.auto.commit", "false")
        .set("auto.offset.reset", "earliest")
        .create()?;
    let metadata = consumer.fetch_metadata(None, Duration::from_secs(10))?;
    let mut tpl = TopicPartitionList::new();
    for t in metadata
        .topics()
        .iter()
        .filter(|t| topics.iter().any(|n| n == t.name()))
    {
        for p in t.partitions() {
            tpl.add_partition_offset(t.name(), p.id(), rdkafka::Offset::Beginning)?;
        }
    }
    consumer.assign(&tpl)?;
    let start = Instant::now();
    let mut seen = 0usize;
    let mut bytes = 0usize;
    while seen < expected {
        let m = tokio::time::timeout(Duration::from_secs(30), consumer.recv())
            .await
            .context("raw consume stalled for 30 s")??;
        bytes += m.payload_len();
        seen += 1;
    }
    let secs = start.elapsed().as_secs_f64();
    tracing::debug!(bytes, "raw consume done");
    Ok(secs)
}

/// The COPY text of a stage's rows, by part and transaction: `lanes` parts written
/// concurrently (as a processor's lanes write), each a run of transactions of at most
/// `per_transaction` events (as the processor commits a batch's share of a lane), each
/// holding one text per target table.
pub struct Parts<const N: usize> {
    parts: Vec<Vec<[String; N]>>,
    per_transaction: usize,
    /// Events in each part's last transaction.
    last: Vec<usize>,
}

impl<const N: usize> Parts<N> {
    pub fn new(lanes: usize, per_transaction: usize) -> Parts<N> {
        let lanes = lanes.max(1);
        Parts {
            parts: vec![Vec::new(); lanes],
            per_transaction: per_transaction.max(1),
            last: vec![0; lanes],
        }
    }

    /// Parts as a processor's `lanes` write a batch of `batch_size` events: each lane's
    /// transaction holds its share of the batch, rounded up to whole groups of `kept_together`
    /// events (an invoice and its payment: 2).
    pub fn lane_shares(lanes: usize, batch_size: usize, kept_together: usize) -> Parts<N> {
        let together = kept_together.max(1);
        let share = batch_size.div_ceil(lanes.max(1)).div_ceil(together) * together;
        Parts::new(lanes, share)
    }

    /// The texts the next event of part `lane % lanes` goes into: its last transaction's,
    /// or a new transaction's once that one holds `per_transaction` events.
    pub fn next_event(&mut self, lane: usize) -> &mut [String; N] {
        let lane = lane % self.parts.len();
        let part = &mut self.parts[lane];
        if part.is_empty() || self.last[lane] == self.per_transaction {
            part.push(std::array::from_fn(|_| String::new()));
            self.last[lane] = 0;
        }
        self.last[lane] += 1;
        let last = part.len() - 1;
        &mut part[last]
    }
}

/// `COPY`s rows into tables made `like` the pipeline's `including all` (keys, unique and
/// check constraints, indexes, defaults) with their insert triggers, and checks that each
/// took every row; returns the seconds the COPYs and the commits took. `targets` names each
/// `table (columns)`; each of `parts`' parts is copied on a connection of its own, its
/// transactions one after the other, the parts concurrently, so a transaction holds whole
/// events. `tables` are made in a schema of their own, in that order, and each session's
/// search path puts them first, so the triggers check against them.
pub async fn copy_like<const N: usize>(
    url: &str,
    tables: &[&str],
    targets: &[&str; N],
    parts: &Parts<N>,
) -> anyhow::Result<f64> {
    let parts = &parts.parts;
    let mut conn = sqlx::PgConnection::connect(url).await?;
    conn.execute("drop schema if exists bench_raw cascade; create schema bench_raw")
        .await?;
    for table in tables {
        conn.execute(sqlx::AssertSqlSafe(format!(
            "create table bench_raw.{table} (like public.{table} including all)"
        )))
        .await?;
        let triggers: Vec<(String,)> = sqlx::query_as(
            "select pg_get_triggerdef(oid) from pg_trigger
              where tgrelid = $1::regclass and not tgisinternal
                and tgtype & 4 = 4", // fires on INSERT
        )
        .bind(format!("public.{table}"))
        .fetch_all(&mut conn)
        .await?;
        for (def,) in triggers {
            let def = def.replace(
                &format!(" ON public.{table} "),
                &format!(" ON bench_raw.{table} "),
            );
            conn.execute(sqlx::AssertSqlSafe(def)).await?;
        }
    }
    let mut sessions = Vec::with_capacity(parts.len());
    for _ in parts {
        let mut session = sqlx::PgConnection::connect(url).await?;
        session
            .execute("set search_path = bench_raw, public")
            .await?;
        sessions.push(session);
    }
    let start = Instant::now();
    futures_util::future::try_join_all(sessions.iter_mut().zip(parts).map(
        |(session, part)| async move {
            for transaction in part {
                let mut tx = session.begin().await?;
                for (target, data) in targets.iter().zip(transaction) {
                    let mut copy = tx
                        .copy_in_raw(&format!("copy bench_raw.{target} from stdin"))
                        .await?;
                    copy.send(data.as_bytes()).await?;
                    copy.finish().await?;
                }
                tx.commit().await?;
            }
            anyhow::Ok(())
        },
    ))
    .await?;
    let secs = start.elapsed().as_secs_f64();
    for session in sessions {
        session.close().await?;
    }
    for (t, target) in targets.iter().enumerate() {
        let table = target.split_whitespace().next().unwrap_or_default();
        let (rows,): (i64,) = sqlx::query_as(sqlx::AssertSqlSafe(format!(
            "select count(*) from bench_raw.{table}"
        )))
        .fetch_one(&mut conn)
        .await?;
        let lines: usize = parts
            .iter()
            .flatten()
            .map(|transaction| transaction[t].lines().count())
            .sum();
        if rows as usize != lines {
            bail!("COPY wrote {rows} rows into {table}, expected {lines}");
        }
    }
    conn.execute("drop schema bench_raw cascade").await?;
    conn.close().await?;
    Ok(secs)
}
