//! The campaign's load: commands at a steady rate through both APIs (invoices, manual and
//! gateway payments, voids, salaries, bills), each under an `Idempotency-Key` of its own
//! and retried with that key, on either API, until it is answered. What was acknowledged
//! is what the books must show.

use std::sync::Arc;
use std::time::Duration;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use rust_decimal::Decimal;
use serde_json::{Value, json};
use tokio::sync::{Mutex, watch};
use uuid::Uuid;

use crate::calendar::Dates;

pub struct Target {
    pub apis: Vec<String>,
    pub key: String,
    pub rate: u32,
    pub seed: u64,
}

/// A command an API acknowledged (2xx), with the event it promised.
#[derive(Debug, Clone)]
pub struct Acked {
    pub kind: &'static str,
    /// The consistency token: the id of the event the command emitted.
    pub event_id: Uuid,
    /// The customer whose receivable it moved, and by how much (invoices +, payments and
    /// voids -).
    pub receivable: Option<(Uuid, Decimal)>,
}

/// Everything the load saw.
#[derive(Debug, Default)]
pub struct Record {
    pub commands: Vec<Acked>,
    /// Commands refused for what they asked (a 4xx: a void of an invoice paid meanwhile).
    pub refused: usize,
    /// Commands given up on after every retry (none, unless the pipeline stayed down).
    pub unanswered: usize,
}

/// An invoice the load knows: what is left to pay, and whether it may still be voided.
#[derive(Debug, Clone)]
struct Open {
    invoice_id: String,
    customer: Uuid,
    amount: Decimal,
    paid: Decimal,
}

pub struct Load {
    stop: watch::Sender<bool>,
    task: tokio::task::JoinHandle<Record>,
}

impl Load {
    pub fn start(target: Target) -> Load {
        let (stop, stopped) = watch::channel(false);
        let task = tokio::spawn(run(target, stopped));
        Load { stop, task }
    }

    pub async fn stop(self) -> Record {
        let _ = self.stop.send(true);
        self.task.await.unwrap_or_default()
    }
}

async fn run(target: Target, stopped: watch::Receiver<bool>) -> Record {
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap_or_default();
    let shared = Arc::new(Shared {
        http,
        apis: target.apis,
        key: target.key,
        record: Mutex::new(Record::default()),
        open: Mutex::new(Vec::new()),
    });
    let customers: Vec<Uuid> = {
        let mut ids = Vec::new();
        for n in 0..20 {
            let body = json!({"name": format!("Resident {n}"), "email": format!("resident{n}@society.example"), "unit": format!("A-{n}")});
            if let Some(reply) = shared.send("/v1/customers", body).await
                && let Some(id) = reply["id"].as_str().and_then(|s| s.parse().ok())
            {
                ids.push(id);
            }
        }
        ids
    };
    let mut rng = StdRng::seed_from_u64(target.seed);
    let pause = Duration::from_secs_f64(1.0 / f64::from(target.rate.max(1)));
    let mut tasks = tokio::task::JoinSet::new();
    while !*stopped.borrow() && !customers.is_empty() {
        let command = Command::choose(&mut rng, &customers);
        let shared = shared.clone();
        tasks.spawn(async move { shared.issue(command).await });
        // Bounded: a stalled pipeline slows the load instead of piling requests up.
        while tasks.len() >= 64 {
            tasks.join_next().await;
        }
        tokio::time::sleep(pause).await;
    }
    while tasks.join_next().await.is_some() {}
    let shared = Arc::try_unwrap(shared).ok();
    shared.map(|s| s.record.into_inner()).unwrap_or_default()
}

struct Shared {
    http: reqwest::Client,
    apis: Vec<String>,
    key: String,
    record: Mutex<Record>,
    open: Mutex<Vec<Open>>,
}

/// The kinds of command and their weights.
enum Command {
    Invoice { customer: Uuid, amount: Decimal },
    ManualPayment { pick: usize, share: u32 },
    GatewayPayment { pick: usize },
    Void { pick: usize },
    Salary { employee: Uuid, amount: Decimal },
    Bill { amount: Decimal },
}

fn money(rng: &mut StdRng) -> Decimal {
    Decimal::new(rng.random_range(10_000..500_000), 2)
}

impl Command {
    fn choose(rng: &mut StdRng, customers: &[Uuid]) -> Command {
        let pick = rng.random_range(0..1_000_000);
        match rng.random_range(0..100) {
            0..50 => Command::Invoice {
                customer: customers[rng.random_range(0..customers.len())],
                amount: money(rng),
            },
            50..70 => Command::ManualPayment {
                pick,
                share: rng.random_range(1..=2),
            },
            70..75 => Command::GatewayPayment { pick },
            75..85 => Command::Void { pick },
            85..95 => Command::Salary {
                employee: Uuid::now_v7(),
                amount: money(rng),
            },
            _ => Command::Bill { amount: money(rng) },
        }
    }
}

impl Shared {
    /// Sends one command until an API answers it: a transport error or a 5xx is retried
    /// under the same key, alternating APIs, for up to five minutes.
    async fn send(&self, path: &str, body: Value) -> Option<Value> {
        self.send_answer(path, body).await.ok().flatten()
    }

    /// `Ok(Some(body))` acknowledged, `Ok(None)` refused (4xx), `Err` never answered.
    async fn send_answer(&self, path: &str, body: Value) -> Result<Option<Value>, ()> {
        let key = Uuid::now_v7().to_string();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(300);
        let mut attempt = 0usize;
        while tokio::time::Instant::now() < deadline {
            let api = &self.apis[attempt % self.apis.len()];
            attempt += 1;
            let sent = self
                .http
                .post(format!("{api}{path}"))
                .bearer_auth(&self.key)
                .header("Idempotency-Key", &key)
                .json(&body)
                .send()
                .await;
            match sent {
                Ok(reply) if reply.status().is_success() => {
                    return Ok(reply.json().await.ok());
                }
                // The same key may still be in the hands of the API that died with it.
                Ok(reply)
                    if reply.status().is_client_error()
                        && reply.status() != reqwest::StatusCode::TOO_MANY_REQUESTS
                        && reply.status() != reqwest::StatusCode::REQUEST_TIMEOUT =>
                {
                    return Ok(None);
                }
                _ => tokio::time::sleep(Duration::from_millis(250)).await,
            }
        }
        Err(())
    }

    async fn issue(&self, command: Command) {
        let (kind, path, body, target) = match command {
            Command::Invoice { customer, amount } => {
                let dates = Dates::today();
                (
                    "invoice",
                    "/v1/invoices".to_string(),
                    json!({"customer_id": customer, "amount": amount.to_string(),
                           "issue_date": dates.issue, "due_date": dates.due}),
                    None,
                )
            }
            Command::ManualPayment { pick, share } => {
                let Some(open) = self.pick_open(pick, false).await else {
                    return;
                };
                let amount = ((open.amount - open.paid) / Decimal::from(share)).round_dp(2);
                (
                    "manual_payment",
                    "/v1/payments/manual".to_string(),
                    json!({"invoice_id": open.invoice_id, "amount": amount.to_string()}),
                    Some((open, amount)),
                )
            }
            Command::GatewayPayment { pick } => {
                let Some(open) = self.pick_open(pick, true).await else {
                    return;
                };
                let amount = open.amount;
                (
                    "gateway_payment",
                    "/v1/payments".to_string(),
                    json!({"invoice_id": open.invoice_id, "method": "upi"}),
                    Some((open, amount)),
                )
            }
            Command::Void { pick } => {
                let Some(open) = self.pick_open(pick, true).await else {
                    return;
                };
                let amount = open.amount;
                (
                    "void",
                    format!("/v1/invoices/{}/void", open.invoice_id),
                    json!({"reason": "raised in error"}),
                    Some((open, amount)),
                )
            }
            Command::Salary { employee, amount } => (
                "salary",
                "/v1/salaries".to_string(),
                json!({"employee_id": employee, "employee_name": "Guard", "period": "2026-11",
                       "amount": amount.to_string()}),
                None,
            ),
            Command::Bill { amount } => (
                "bill",
                "/v1/bills".to_string(),
                json!({"vendor_id": Uuid::now_v7(), "amount": amount.to_string(),
                       "description": "repairs", "due_date": "2026-12-20"}),
                None,
            ),
        };
        let answer = self.send_answer(&path, body).await;
        let mut record = self.record.lock().await;
        let reply = match answer {
            Ok(Some(reply)) => reply,
            Ok(None) => {
                record.refused += 1;
                if let Some((open, _)) = target {
                    self.open.lock().await.push(open);
                }
                return;
            }
            Err(()) => {
                record.unanswered += 1;
                return;
            }
        };
        let Some(event_id) = reply["consistency_token"]
            .as_str()
            .and_then(|t| t.parse().ok())
        else {
            // A gateway payment that ended without a payment (declined) moves nothing.
            record.refused += 1;
            return;
        };
        let receivable = match (kind, target) {
            ("invoice", None) => {
                let customer = reply["customer_id"].as_str().and_then(|s| s.parse().ok());
                let amount = reply["amount"].as_str().and_then(|s| s.parse().ok());
                let invoice_id = reply["invoice_id"].as_str().map(str::to_string);
                match (customer, amount, invoice_id) {
                    (Some(customer), Some(amount), Some(invoice_id)) => {
                        self.open.lock().await.push(Open {
                            invoice_id,
                            customer,
                            amount,
                            paid: Decimal::ZERO,
                        });
                        Some((customer, amount))
                    }
                    _ => None,
                }
            }
            ("manual_payment", Some((mut open, amount))) => {
                open.paid += amount;
                if open.paid < open.amount {
                    self.open.lock().await.push(open.clone());
                }
                Some((open.customer, -amount))
            }
            (_, Some((open, amount))) => Some((open.customer, -amount)),
            _ => None,
        };
        record.commands.push(Acked {
            kind,
            event_id,
            receivable,
        });
    }

    /// Takes an open invoice out of the pool (so two commands never race for it): any, or
    /// with `untouched`, one with nothing paid yet.
    async fn pick_open(&self, pick: usize, untouched: bool) -> Option<Open> {
        let mut open = self.open.lock().await;
        let candidates: Vec<usize> = open
            .iter()
            .enumerate()
            .filter(|(_, o)| !untouched || o.paid.is_zero())
            .map(|(i, _)| i)
            .collect();
        if candidates.is_empty() {
            return None;
        }
        let at = candidates[pick % candidates.len()];
        Some(open.swap_remove(at))
    }
}
