//! `dhanman demo`: the whole pipeline in one process, driven over HTTP like any client
//! would, for a small society. Prints what the books say at the end.

use std::time::Duration;

use anyhow::{Context, bail};
use chrono::Days;
use rust_decimal::Decimal;
use secrecy::ExposeSecret;
use serde_json::{Value, json};

use crate::Config;
use crate::calendar::Dates;

struct Client {
    http: reqwest::Client,
    base: String,
    key: String,
}

impl Client {
    async fn post(&self, path: &str, body: Value) -> anyhow::Result<Value> {
        self.send_post(path, None, body).await
    }

    /// A command that needs an `Idempotency-Key` (a payment through the gateway).
    async fn post_with_key(&self, path: &str, key: &str, body: Value) -> anyhow::Result<Value> {
        self.send_post(path, Some(key), body).await
    }

    async fn send_post(&self, path: &str, key: Option<&str>, body: Value) -> anyhow::Result<Value> {
        let mut request = self.http.post(format!("{}{path}", self.base));
        if let Some(key) = key {
            request = request.header("idempotency-key", key);
        }
        let response = request
            .bearer_auth(&self.key)
            .header("x-correlation-id", format!("demo-{}", uuid::Uuid::now_v7()))
            .json(&body)
            .send()
            .await?;
        let status = response.status();
        let body: Value = response.json().await?;
        if !status.is_success() {
            bail!("POST {path} answered {status}: {body}");
        }
        Ok(body)
    }

    /// The same API as a user the society invited: the code of their welcome email,
    /// exchanged for their own key (the administrator who created them never sees it).
    /// The email is the one the notifier sent for this society (by its Message-ID): the
    /// same address may have been invited by an earlier run's society, whose welcome the
    /// notifier can deliver to this run's server if that run stopped before it could.
    async fn as_invited(
        &self,
        mailbox: Option<&dhanman_devpeers::smtp::SmtpSink>,
        pool: &sqlx::PgPool,
        organization_id: uuid::Uuid,
        email: &str,
    ) -> anyhow::Result<Client> {
        let sink = mailbox.context(
            "the demo redeems invitations from its own SMTP server: run it without SMTP_URL",
        )?;
        let deadline = std::time::Instant::now() + Duration::from_secs(60);
        let token = loop {
            let ours: Vec<String> = sqlx::query_scalar(
                "select message_id from notification_deliveries
                  where organization_id = $1 and recipient = $2 and template = 'welcome'
                    and status = 'sent'",
            )
            .bind(organization_id)
            .bind(email)
            .fetch_all(pool)
            .await?;
            let ours: std::collections::HashSet<&str> =
                ours.iter().map(|id| id.trim_matches(['<', '>'])).collect();
            let found = sink
                .messages()
                .iter()
                .filter(|m| ours.contains(m.message_id().trim_matches(['<', '>'])))
                .find_map(|m| {
                    m.text()
                        .lines()
                        .map(str::trim)
                        .find(|l| l.starts_with("dhi_"))
                        .map(str::to_string)
                });
            match found {
                Some(token) => break token,
                None if std::time::Instant::now() > deadline => {
                    bail!("no invitation email reached {email}")
                }
                None => tokio::time::sleep(Duration::from_millis(100)).await,
            }
        };
        let response = self
            .http
            .post(format!("{}/v1/invitations/accept", self.base))
            .json(&json!({ "token": token }))
            .send()
            .await?;
        let status = response.status();
        let body: Value = response.json().await?;
        if !status.is_success() {
            bail!("accepting the invitation of {email} answered {status}: {body}");
        }
        Ok(Client {
            http: self.http.clone(),
            base: self.base.clone(),
            key: body["api_key"]
                .as_str()
                .context("the invited user's key")?
                .to_string(),
        })
    }

    async fn get(&self, path: &str) -> anyhow::Result<Value> {
        let response = self
            .http
            .get(format!("{}{path}", self.base))
            .bearer_auth(&self.key)
            .send()
            .await?;
        let status = response.status();
        let body: Value = response.json().await?;
        if !status.is_success() {
            bail!("GET {path} answered {status}: {body}");
        }
        Ok(body)
    }
}

const RESIDENTS: &[(&str, &str, &str)] = &[
    ("Asha Kulkarni", "A-101", "3500.00"),
    ("Rahul Mehta", "A-102", "3500.00"),
    ("Fatima Shaikh", "B-201", "4200.50"),
    ("Joseph D'Souza", "B-202", "4200.50"),
    ("Meera Iyer", "C-301", "5100.75"),
];

/// Runs the demo against `pipeline`, which runs every part of the pipeline in this process
/// (what `dhanman up` runs) until its stop is requested.
pub async fn run<P, F>(config: &Config, pipeline: P) -> anyhow::Result<()>
where
    P: FnOnce(Config, tokio::net::TcpListener, sqlx::PgPool, dhanman_processors::Stop) -> F,
    F: Future<Output = anyhow::Result<()>> + Send + 'static,
{
    let mut config = config.clone();
    let pool = config.pool().await?;
    crate::migrate(&pool).await?;
    crate::ensure_topics(&config).await?;
    // The development payment gateway, in-process on an ephemeral port, for the saga.
    let gateway = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    config.gateway_url = format!("http://{}", gateway.local_addr()?);
    tokio::spawn(dhanman_devpeers::serve(
        gateway,
        dhanman_devpeers::Switches::default(),
    ));
    // Notifications go to an SMTP server of the demo's own, in-process, unless
    // DHANMAN_SMTP_URL or SMTP_URL names one (Mailpit of the compose file, say).
    let smtp_named = [crate::SMTP_URL.name, crate::SMTP_URL.alias]
        .iter()
        .any(|name| std::env::var_os(name).is_some());
    let mailbox = if smtp_named {
        None
    } else {
        let sink = dhanman_devpeers::smtp::SmtpSink::start()
            .await
            .context("starting the demo's SMTP server")?;
        config.smtp_url = sink.url().into();
        Some(sink)
    };
    // An ephemeral port: the demo must not collide with a running `dhanman up`.
    config.http_addr.set_port(0);
    let listener = crate::bind_api(&config).await?;
    config.http_addr = listener.local_addr()?;
    let base = format!("http://{}", config.http_addr);
    let stopper = dhanman_processors::Stopper::default();
    let pipeline = {
        let (config, pool, stop) = (config.clone(), pool.clone(), stopper.signal());
        tokio::spawn(pipeline(config, listener, pool, stop))
    };
    let shown = match joined(&config).await {
        Ok(()) => society(&config, &pool, base, mailbox.as_ref()).await,
        Err(e) => Err(e),
    };
    // The pipeline stops as `dhanman up` does on SIGTERM: its consumers leave their
    // groups, so the next run's join at once.
    stopper.stop();
    match tokio::time::timeout(crate::STOP_TIMEOUT + Duration::from_secs(5), pipeline).await {
        Ok(Ok(Ok(()))) => {}
        Ok(Ok(Err(e))) => tracing::error!(error = %e, "the pipeline stopped with an error"),
        Ok(Err(e)) => tracing::error!(error = %e, "the pipeline task failed"),
        Err(_) => tracing::warn!("the pipeline did not stop in time"),
    }
    shown
}

/// The society's story, told through the API of the running pipeline: residents, invoices,
/// payments, a purchase; then the books and the notifications.
async fn society(
    config: &Config,
    pool: &sqlx::PgPool,
    base: String,
    mailbox: Option<&dhanman_devpeers::smtp::SmtpSink>,
) -> anyhow::Result<()> {
    let org = dhanman_producers::orgs::create_organization(
        pool,
        "Green Meadows Co-operative Housing Society",
        Some("secretary@greenmeadows.example"),
    )
    .await
    .map_err(|e| anyhow::anyhow!("{e}"))?;
    println!("society  {} ({})", org.name, org.organization_id);
    let organization_id = org.organization_id;
    let client = Client {
        http: reqwest::Client::builder()
            .timeout(Duration::from_secs(30))
            .build()?,
        base,
        key: org.api_key,
    };

    // Every command's token: each covers its own event, and events of different
    // partitions may be applied in any order.
    let mut tokens = Vec::new();
    let mut residents = Vec::new();
    for (i, (name, unit, charge)) in RESIDENTS.iter().enumerate() {
        let email = format!(
            "{}@example.org",
            name.split(' ').next().unwrap_or("resident").to_lowercase()
        );
        let customer = client
            .post(
                "/v1/customers",
                json!({"name": name, "unit": unit, "email": email}),
            )
            .await?;
        let id = customer["id"].as_str().context("customer id")?.to_string();
        // Three of five pay: two in full through the payment gateway (the saga), one in
        // part by hand. The two who pay nothing are due within the reminders' lead time, so
        // their reminders go out at once; the others fall due after the demo.
        let paid = match i {
            0 | 2 => Some(charge.to_string()),
            4 => Some("2000.00".to_string()),
            _ => None,
        };
        let dates = Dates::today();
        let due = match paid {
            Some(_) => dates.due,
            None => dates.issue + Days::new(config.reminder_days_before.into()),
        };
        let invoice = client
            .post(
                "/v1/invoices",
                json!({
                    "customer_id": id, "amount": charge, "currency": "INR",
                    "due_date": due, "issue_date": dates.issue, "period": dates.period,
                    "description": format!("Maintenance, {}", dates.issue.format("%B %Y")),
                }),
            )
            .await?;
        let mut token = invoice["consistency_token"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        tokens.push(token.clone());
        if let Some(amount) = &paid {
            let payment = if i == 4 {
                client
                    .post(
                        "/v1/payments/manual",
                        json!({"invoice_id": invoice["invoice_id"], "amount": amount, "currency": "INR", "method": "cash"}),
                    )
                    .await?
            } else {
                client
                    .post_with_key(
                        "/v1/payments",
                        &format!(
                            "demo-pay-{}",
                            invoice["invoice_id"].as_str().unwrap_or_default()
                        ),
                        json!({"invoice_id": invoice["invoice_id"], "method": "upi"}),
                    )
                    .await?
            };
            token = payment["consistency_token"]
                .as_str()
                .unwrap_or_default()
                .to_string();
            tokens.push(token.clone());
        }
        residents.push((name, unit, id, token, paid));
    }

    // A purchase: the lift's annual service, above the CFO threshold, so the committee's
    // manager and the CFO both approve; then the vendor's bill releases the reservation.
    let mut approvers = Vec::new();
    for (email, name, role) in [
        ("manager@greenmeadows.example", "Kavita Rao", "manager"),
        ("treasurer@greenmeadows.example", "Vikram Shah", "cfo"),
    ] {
        let user = client
            .post(
                "/v1/users",
                json!({"email": email, "name": name, "role": role}),
            )
            .await?;
        // Approval requests go to the users the projection knows: wait until it does.
        let token = user["consistency_token"].as_str().unwrap_or_default();
        client
            .get(&format!("/v1/users?consistent_with={token}"))
            .await?;
        approvers.push(
            client
                .as_invited(mailbox, pool, organization_id, email)
                .await?,
        );
    }
    let [manager, cfo] = <[Client; 2]>::try_from(approvers)
        .map_err(|_| anyhow::anyhow!("two approvers expected"))?;
    let vendor = uuid::Uuid::now_v7();
    let po = client
        .post(
            "/v1/purchase-orders",
            json!({"vendor_id": vendor, "vendor_name": "Shree Lifts", "items": [
                {"description": "Lift annual service", "quantity": 2, "unit_price": "28000.00"},
                {"description": "Emergency call-outs", "quantity": 4, "unit_price": "1500.00"}
            ]}),
        )
        .await?;
    let po_id = po["po_id"]
        .as_str()
        .context("purchase order id")?
        .to_string();
    manager
        .post(&format!("/v1/purchase-orders/{po_id}/approve"), json!({}))
        .await?;
    let approved = cfo
        .post(
            &format!("/v1/purchase-orders/{po_id}/approve"),
            json!({"comment": "within budget"}),
        )
        .await?;
    tokens.extend(approved["consistency_token"].as_str().map(str::to_string));
    let bill = client
        .post(
            "/v1/bills",
            json!({"vendor_id": vendor, "po_id": po_id, "amount": "59000.00",
                   "description": "Lift service, 2026", "due_date": "2026-12-31"}),
        )
        .await?;
    tokens.extend(bill["consistency_token"].as_str().map(str::to_string));
    println!(
        "purchase order {} for {} INR: {} by {}; billed {}",
        po_id,
        approved["amount"].as_str().unwrap_or(""),
        approved["status"].as_str().unwrap_or(""),
        approved["approval_trail"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|t| t["role"].as_str())
            .collect::<Vec<_>>()
            .join(" and "),
        bill["amount"].as_str().unwrap_or(""),
    );

    // Read after the ledger has applied every event we caused.
    for token in &tokens {
        client
            .get(&format!("/v1/trial-balance?consistent_with={token}"))
            .await?;
    }
    let trial = client.get("/v1/trial-balance").await?;
    println!();
    println!(
        "{:<18} {:<6} {:>10} {:>10} {:>10}",
        "resident", "unit", "invoiced", "paid", "owes"
    );
    for (name, unit, id, token, _) in &residents {
        let balance = client
            .get(&format!(
                "/v1/customers/{id}/balance?consistent_with={token}"
            ))
            .await?;
        let b = &balance["balances"][0];
        let num = |v: &Value| {
            v.as_str()
                .and_then(|s| s.parse::<Decimal>().ok())
                .unwrap_or_default()
        };
        println!(
            "{:<18} {:<6} {:>10} {:>10} {:>10}",
            name,
            unit,
            num(&b["invoiced"]),
            num(&b["settled"]),
            num(&b["balance"])
        );
    }
    println!();
    println!("trial balance");
    for currency in trial["currencies"].as_array().into_iter().flatten() {
        for account in currency["accounts"].as_array().into_iter().flatten() {
            println!(
                "  {} {:<22} {:>10} {:>10}",
                account["account_code"].as_str().unwrap_or(""),
                account["name"].as_str().unwrap_or(""),
                account["debit"].as_str().unwrap_or(""),
                account["credit"].as_str().unwrap_or(""),
            );
        }
        println!(
            "  {:<27} {:>10} {:>10}  balanced: {}",
            format!("total {}", currency["currency"].as_str().unwrap_or("")),
            currency["total_debit"].as_str().unwrap_or(""),
            currency["total_credit"].as_str().unwrap_or(""),
            currency["balanced"]
        );
    }
    // What the notifier made of it: one delivery per (event, recipient, template), once
    // everything the flows caused has gone through.
    let busy = settle(config, pool, organization_id, mailbox.is_some()).await?;
    let deliveries: Vec<(String, i64)> = sqlx::query_as(
        "select status, count(*) from notification_deliveries d
          where d.organization_id = $1 group by status order by status",
    )
    .bind(organization_id)
    .fetch_all(pool)
    .await?;
    let counts: Vec<String> = deliveries.iter().map(|(s, n)| format!("{n} {s}")).collect();
    let counts = if counts.is_empty() {
        "none yet".to_string()
    } else {
        counts.join(", ")
    };
    println!();
    match &mailbox {
        Some(sink) => {
            let received: std::collections::HashSet<String> = sink
                .messages()
                .iter()
                .map(|m| m.message_id().trim_matches(['<', '>']).to_string())
                .collect();
            let sent: Vec<(String, String, String)> = sqlx::query_as(
                "select recipient, subject, message_id from notification_deliveries
                  where organization_id = $1 and status = 'sent' order by recipient, subject",
            )
            .bind(organization_id)
            .fetch_all(pool)
            .await?;
            let here = sent
                .iter()
                .filter(|(_, _, id)| received.contains(id.trim_matches(['<', '>'])))
                .count();
            println!("notifications: {counts}; {here} of them received by the demo's SMTP server:");
            let width = sent.iter().map(|(to, _, _)| to.len()).max().unwrap_or(0);
            for (to, subject, _) in &sent {
                println!("  {to:<width$}  {subject}");
            }
        }
        None => println!(
            "notifications: {counts} (delivered over SMTP_URL, {}; those it does not take \
             wait and retry)",
            config.smtp_url.expose_secret()
        ),
    }
    if let Some(busy) = busy {
        println!(
            "(the pipeline was still busy after {SETTLE_WITHIN:?}, {busy}: these are partial)"
        );
    }
    println!();
    println!(
        "API key for this society (try it against `dhanman up`): {}",
        client.key
    );
    Ok(())
}

/// How long the demo waits for the pipeline to finish what the flows caused.
const SETTLE_WITHIN: Duration = Duration::from_secs(90);

/// Waits until no reminder of the organization is due to fire (a timer due now makes a
/// command, then an email), the outbox is published, every processor's group has read
/// every partition of its topics to the end (one it has not started on counts from the
/// log's start), and (when `deliveries` is set) no notification of the organization waits
/// to be sent, twice in a row; returns `None` when that happened within [`SETTLE_WITHIN`],
/// else what was still busy.
async fn settle(
    config: &Config,
    pool: &sqlx::PgPool,
    organization_id: uuid::Uuid,
    deliveries: bool,
) -> anyhow::Result<Option<String>> {
    let probe = dhanman_connectors::kafka::probe(&config.kafka_bootstrap_servers)?;
    let reads = processor_reads(config);
    let deadline = tokio::time::Instant::now() + SETTLE_WITHIN;
    let mut quiet_checks = 0;
    let mut busy = String::new();
    while tokio::time::Instant::now() < deadline {
        let (outbox, _) = dhanman_connectors::gauges::outbox_backlog(pool).await?;
        let behind = dhanman_connectors::lag::unread(pool, &probe, &reads).await?;
        let (waiting, due): (i64, i64) = sqlx::query_as(
            "select (select count(*) from notification_deliveries
                      where organization_id = $1 and status in ('pending', 'sending')),
                    (select count(*) from payment_reminders
                      where organization_id = $1 and state = 'scheduled' and fire_at <= now())",
        )
        .bind(organization_id)
        .fetch_one(pool)
        .await?;
        let waiting = if deliveries { waiting } else { 0 };
        if outbox == 0 && behind.is_empty() && waiting == 0 && due == 0 {
            quiet_checks += 1;
            if quiet_checks == 2 {
                return Ok(None);
            }
        } else {
            quiet_checks = 0;
            let behind: Vec<String> = behind
                .iter()
                .map(|p| format!("{} {}[{}] {}", p.group, p.topic, p.partition, p.lag))
                .collect();
            busy = format!(
                "outbox {outbox}, notifications waiting {waiting}, reminders due {due}, \
                 records waiting: {}",
                if behind.is_empty() {
                    "none".to_string()
                } else {
                    behind.join(", ")
                }
            );
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    Ok(Some(busy))
}

/// How long the demo waits for its processors to join their groups.
const JOIN_WITHIN: Duration = Duration::from_secs(90);

/// Waits until this process's member holds its share in every processor's group and the
/// group is stable, so that the story's reads with `consistent_with` wait on the processors'
/// work, not on their joins: a broker restarted moments before, or a member of an earlier
/// run that vanished without leaving, can keep a group rebalancing for longer than such a
/// read waits. Says so when that takes a while.
async fn joined(config: &Config) -> anyhow::Result<()> {
    let ours = format!("-{}", std::process::id());
    let groups: Vec<String> = processor_reads(config)
        .into_iter()
        .map(|(g, _)| g)
        .collect();
    // One client asks the coordinators for the whole wait.
    let probe = dhanman_connectors::kafka::probe(&config.kafka_bootstrap_servers)?;
    let started = tokio::time::Instant::now();
    let mut said = false;
    loop {
        let (client, asked, ours) = (probe.clone(), groups.clone(), ours.clone());
        let waiting = tokio::task::spawn_blocking(move || {
            let mut waiting = Vec::new();
            for group in asked {
                let described = dhanman_connectors::groups::describe(&client, &group)
                    .with_context(|| format!("describing group {group}"))?;
                let member = described
                    .members
                    .iter()
                    .any(|m| m.client_id.ends_with(&ours));
                if described.state != "Stable" || !member {
                    waiting.push(format!("{group} ({})", described.state));
                }
            }
            anyhow::Ok(waiting)
        })
        .await??;
        if waiting.is_empty() {
            return Ok(());
        }
        let waited = started.elapsed();
        if waited > JOIN_WITHIN {
            bail!(
                "the processors did not join their consumer groups within {JOIN_WITHIN:?}: {}",
                waiting.join(", ")
            );
        }
        if !said && waited > Duration::from_secs(5) {
            eprintln!(
                "waiting for the processors to join their consumer groups: {}",
                waiting.join(", ")
            );
            said = true;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Every processor's consumer group and the topics it reads.
fn processor_reads(config: &Config) -> Vec<(String, Vec<String>)> {
    let settings = config.processor_settings();
    dhanman_processors::catalog::PROCESSORS
        .iter()
        .map(|spec| {
            let group =
                dhanman_processors::runtime::default_group_id(&config.topic_prefix, spec.name);
            let topics = spec
                .topics(&settings)
                .iter()
                .map(|t| format!("{}{t}", config.topic_prefix))
                .collect();
            (group, topics)
        })
        .collect()
}
