//! The load generator: invoices posted over keep-alive connections, either as fast as the
//! server answers (closed loop, a fixed number of connections each with one request in
//! flight) or at a fixed rate (open loop, latency counted from when a request was due, so
//! a server that falls behind shows it).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use rust_decimal::Decimal;
use serde_json::{Value, json};
use tokio::sync::{Mutex, Semaphore, mpsc};
use uuid::Uuid;

use crate::calendar::Dates;

/// One POST: where, under which idempotency key, with which body.
pub struct Command {
    pub path: &'static str,
    pub idempotency_key: String,
    pub body: Value,
}

/// Invoices for many customers, each under an idempotency key of its own.
#[derive(Clone)]
pub struct Invoices {
    customers: Arc<Vec<Uuid>>,
    run: String,
    dates: Dates,
}

impl Invoices {
    pub fn new(customers: &[Uuid]) -> Invoices {
        Invoices {
            customers: Arc::new(customers.to_vec()),
            run: Uuid::now_v7().simple().to_string(),
            dates: Dates::today(),
        }
    }

    pub fn customer(&self, seq: u64) -> Uuid {
        self.customers[seq as usize % self.customers.len()]
    }

    /// The body of invoice `seq`, as a command or a batch's item carries it.
    pub fn item(&self, seq: u64) -> Value {
        json!({
            "customer_id": self.customer(seq),
            "amount": Decimal::new(100_000 + (seq % 5000) as i64, 2),
            "issue_date": self.dates.issue,
            "due_date": self.dates.due,
            "period": self.dates.period,
        })
    }

    /// `POST /v1/invoices` (or `path`, the same body elsewhere).
    pub fn single(&self, path: &'static str, seq: u64) -> Command {
        Command {
            path,
            idempotency_key: format!("bench-{}-{seq}", self.run),
            body: self.item(seq),
        }
    }

    /// `POST /v1/invoices/batch` of `size` invoices, one key for the batch.
    pub fn batch(&self, seq: u64, size: usize) -> Command {
        let first = seq * size as u64;
        let items: Vec<Value> = (first..first + size as u64).map(|s| self.item(s)).collect();
        Command {
            path: "/v1/invoices/batch",
            idempotency_key: format!("bench-batch-{}-{seq}", self.run),
            body: json!({ "invoices": items }),
        }
    }
}

/// What a load saw.
#[derive(Debug, Default)]
pub struct Outcome {
    /// 2xx answers.
    pub ok: usize,
    /// 2xx answers to requests sent while the load ran: an open loop's requests still
    /// waiting for a connection when it ended (its queue, served after its time) are not.
    pub ok_in_time: usize,
    /// Other answers and transport errors.
    pub failed: usize,
    /// Requests the open loop could not even start (too many waiting): the server fell
    /// far behind.
    pub dropped: usize,
    pub seconds: f64,
    /// Per 2xx answer, in milliseconds.
    pub latencies_ms: Vec<f64>,
    /// The first failure's status and body, to say why.
    pub first_failure: Option<String>,
    /// An open loop's requests due but waiting for a connection, at each second of the load:
    /// the queue in front of the server.
    pub waiting_each_second: Vec<usize>,
}

impl Outcome {
    pub fn rate(&self) -> f64 {
        if self.seconds > 0.0 {
            self.ok as f64 / self.seconds
        } else {
            0.0
        }
    }

    pub fn sorted_latencies(&self) -> Vec<f64> {
        let mut v = self.latencies_ms.clone();
        v.sort_by(f64::total_cmp);
        v
    }
}

/// Where 2xx bodies go (with when they were answered), for callers that read them: the
/// bytes as answered, each caller parsing only what it reads.
pub type Sink = mpsc::UnboundedSender<(Instant, Bytes)>;

pub struct Client {
    http: reqwest::Client,
    base: String,
    key: String,
}

impl Client {
    pub fn new(base: &str, key: &str, connections: usize) -> anyhow::Result<Client> {
        Ok(Client {
            http: reqwest::Client::builder()
                .pool_max_idle_per_host(connections)
                .timeout(Duration::from_secs(60))
                .build()?,
            base: base.trim_end_matches('/').to_string(),
            key: key.to_string(),
        })
    }

    pub fn http(&self) -> &reqwest::Client {
        &self.http
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    pub fn key(&self) -> &str {
        &self.key
    }

    async fn post(&self, command: &Command) -> Result<Bytes, String> {
        let reply = self
            .http
            .post(self.url(command.path))
            .bearer_auth(&self.key)
            .header("idempotency-key", &command.idempotency_key)
            .json(&command.body)
            .send()
            .await
            .map_err(|e| format!("{e}"))?;
        let status = reply.status();
        let body = reply.bytes().await.map_err(|e| format!("{status}: {e}"))?;
        if status.is_success() {
            Ok(body)
        } else {
            Err(format!("{status}: {}", String::from_utf8_lossy(&body)))
        }
    }
}

struct Tally {
    ok: AtomicUsize,
    failed: AtomicUsize,
    latencies: Mutex<Vec<f64>>,
    first_failure: Mutex<Option<String>>,
}

impl Tally {
    fn new() -> Arc<Tally> {
        Arc::new(Tally {
            ok: AtomicUsize::new(0),
            failed: AtomicUsize::new(0),
            latencies: Mutex::new(Vec::new()),
            first_failure: Mutex::new(None),
        })
    }

    async fn record(&self, since: Instant, result: Result<Bytes, String>, sink: Option<&Sink>) {
        match result {
            Ok(body) => {
                let now = Instant::now();
                self.ok.fetch_add(1, Ordering::Relaxed);
                self.latencies
                    .lock()
                    .await
                    .push((now - since).as_secs_f64() * 1000.0);
                if let Some(sink) = sink {
                    let _ = sink.send((now, body));
                }
            }
            Err(why) => {
                self.failed.fetch_add(1, Ordering::Relaxed);
                self.first_failure.lock().await.get_or_insert(why);
            }
        }
    }

    /// What the load saw; `late` of its answers came to requests sent after its time, and
    /// `waiting_each_second` is an open loop's queue.
    async fn outcome(
        &self,
        seconds: f64,
        dropped: usize,
        late: usize,
        waiting_each_second: Vec<usize>,
    ) -> Outcome {
        let ok = self.ok.load(Ordering::Relaxed);
        Outcome {
            ok,
            ok_in_time: ok.saturating_sub(late),
            failed: self.failed.load(Ordering::Relaxed),
            dropped,
            seconds,
            latencies_ms: std::mem::take(&mut *self.latencies.lock().await),
            first_failure: self.first_failure.lock().await.clone(),
            waiting_each_second,
        }
    }
}

/// `connections` workers, each posting the next command as soon as the last is answered,
/// for `duration`.
pub async fn closed_loop(
    client: Arc<Client>,
    connections: usize,
    duration: Duration,
    make: Arc<dyn Fn(u64) -> Command + Send + Sync>,
    sink: Option<Sink>,
) -> Outcome {
    let tally = Tally::new();
    let seq = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    let deadline = start + duration;
    let mut workers = tokio::task::JoinSet::new();
    for _ in 0..connections.max(1) {
        let (client, make, seq, tally, sink) = (
            client.clone(),
            make.clone(),
            seq.clone(),
            tally.clone(),
            sink.clone(),
        );
        workers.spawn(async move {
            while Instant::now() < deadline {
                let command = make(seq.fetch_add(1, Ordering::Relaxed));
                let sent = Instant::now();
                let result = client.post(&command).await;
                tally.record(sent, result, sink.as_ref()).await;
            }
        });
    }
    while workers.join_next().await.is_some() {}
    tally
        .outcome(start.elapsed().as_secs_f64(), 0, 0, Vec::new())
        .await
}

/// Commands at `rate` per second for `duration`, at most `connections` in flight; a
/// request's latency counts from when it was due. Requests still unanswered at the end
/// are waited for (up to a minute).
pub async fn open_loop(
    client: Arc<Client>,
    connections: usize,
    rate: f64,
    duration: Duration,
    make: Arc<dyn Fn(u64) -> Command + Send + Sync>,
    sink: Option<Sink>,
) -> Outcome {
    let tally = Tally::new();
    let permits = Arc::new(Semaphore::new(connections.max(1)));
    // Past this many requests waiting for a connection the load is only growing a queue.
    let max_waiting = (rate * 5.0).max(1000.0) as usize;
    let waiting = Arc::new(AtomicUsize::new(0));
    // Answers to requests that got a connection only after the load's time.
    let late = Arc::new(AtomicUsize::new(0));
    let mut dropped = 0;
    let start = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    let mut ticker = tokio::time::interval(Duration::from_millis(2));
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let mut due: u64 = 0;
    let mut waiting_each_second = Vec::new();
    loop {
        ticker.tick().await;
        let elapsed = start.elapsed();
        if elapsed.as_secs() > waiting_each_second.len() as u64 && elapsed <= duration {
            waiting_each_second.push(waiting.load(Ordering::Relaxed));
        }
        let until = elapsed.min(duration).as_secs_f64();
        let target = (until * rate) as u64;
        while due < target {
            let seq = due;
            due += 1;
            let at = start + Duration::from_secs_f64(seq as f64 / rate);
            if waiting.load(Ordering::Relaxed) >= max_waiting {
                dropped += 1;
                continue;
            }
            waiting.fetch_add(1, Ordering::Relaxed);
            let (client, make, tally, sink, permits, waiting, late) = (
                client.clone(),
                make.clone(),
                tally.clone(),
                sink.clone(),
                permits.clone(),
                waiting.clone(),
                late.clone(),
            );
            tasks.spawn(async move {
                let permit = permits.acquire_owned().await;
                waiting.fetch_sub(1, Ordering::Relaxed);
                let sent_late = start.elapsed() >= duration;
                let command = make(seq);
                let result = client.post(&command).await;
                drop(permit);
                if sent_late && result.is_ok() {
                    late.fetch_add(1, Ordering::Relaxed);
                }
                tally.record(at, result, sink.as_ref()).await;
            });
        }
        while tasks.try_join_next().is_some() {}
        if elapsed >= duration {
            break;
        }
    }
    let _ = tokio::time::timeout(Duration::from_secs(60), async {
        while tasks.join_next().await.is_some() {}
    })
    .await;
    tasks.abort_all();
    tally
        .outcome(
            duration.as_secs_f64(),
            dropped,
            late.load(Ordering::Relaxed),
            waiting_each_second,
        )
        .await
}
