//! The sender loop: claims due deliveries, sends them over SMTP and records the outcome.
//!
//! A claim is its own short transaction: due rows (`pending` whose time has come, or
//! `sending` whose lease ran out) are locked with `for update skip locked`, marked
//! `sending` with one more attempt and a lease, and committed; only then is the message
//! sent, and a second transaction marks it `sent`, schedules a retry (transient failure:
//! connection refused, timeout, 4xx) with exponential backoff, or dead-letters it
//! (permanent failure: an invalid address, 5xx; or the last allowed attempt failed).
//! Several instances may run: `skip locked` and the lease keep them off each other's rows.
//!
//! The honest resend window: if the process dies after the SMTP server has accepted a
//! message (its reply to DATA) and before `sent` is committed, the row's lease runs out
//! and the message is sent again. The Message-ID is the same for every attempt (it is
//! derived from event, recipient and template), so a receiver can drop the copy. A crash
//! at any other point sends nothing twice.

use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::Utc;
use dhanman_connectors::retry::Backoff;
use dhanman_schemas::topics::{self, dlq_headers};
use lettre::message::{Mailbox, MultiPart};
use lettre::{AsyncSmtpTransport, AsyncTransport, Message, Tokio1Executor};
use serde_json::json;
use sqlx::postgres::PgListener;
use sqlx::{PgConnection, PgPool};
use uuid::Uuid;

use crate::companion::{self, Companion};
use crate::stop::Stop;
use crate::{Error, Result};

/// How often the sender looks for due rows when nothing wakes it.
const POLL: Duration = Duration::from_millis(500);

/// Claiming while the database is down: from 100 ms, doubling, at most 5 s.
const CLAIM_RETRY: Backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(5));

/// Recording an outcome while the database is down: as claiming, for as long as the lease
/// lasts.
const RECORD_RETRY: Backoff = CLAIM_RETRY;

#[derive(Debug, Clone)]
pub struct SenderConfig {
    /// `smtp://host[:port]` (port 25 when absent). Plain SMTP: this build has no TLS.
    pub smtp_url: String,
    /// The From address of every message.
    pub from: String,
    /// Attempts before a transiently failing message is dead-lettered.
    pub max_attempts: u32,
    /// Delay before the first retry; doubles each attempt up to `max_backoff`.
    pub backoff: Duration,
    pub max_backoff: Duration,
    /// Limit of one whole SMTP conversation.
    pub timeout: Duration,
    /// How long a claimed row is left to its sender before another may take it over;
    /// longer than `timeout`.
    pub lease: Duration,
    /// Messages in flight at once, so a slow one does not hold up the others.
    pub concurrency: usize,
}

impl SenderConfig {
    pub fn new(smtp_url: &str, from: &str) -> Self {
        SenderConfig {
            smtp_url: smtp_url.to_string(),
            from: from.to_string(),
            max_attempts: 5,
            backoff: Duration::from_secs(1),
            max_backoff: Duration::from_secs(300),
            timeout: Duration::from_secs(30),
            lease: Duration::from_secs(120),
            concurrency: 8,
        }
    }
}

/// The primary key of a delivery.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeliveryKey {
    pub event_id: Uuid,
    pub recipient: String,
    pub template: String,
}

/// Why a delivery is dead-lettered.
#[derive(Debug, Clone, Copy)]
pub struct Failure<'a> {
    /// `permanent`, `exhausted` or `template`.
    pub class: &'a str,
    pub reason: &'a str,
    pub attempts: i32,
}

/// A claimed delivery, ready to send.
#[derive(Debug, sqlx::FromRow)]
struct Claimed {
    event_id: Uuid,
    recipient: String,
    template: String,
    correlation_id: String,
    message_id: String,
    subject: String,
    body_text: String,
    body_html: String,
    attempts: i32,
}

impl Claimed {
    fn key(&self) -> DeliveryKey {
        DeliveryKey {
            event_id: self.event_id,
            recipient: self.recipient.clone(),
            template: self.template.clone(),
        }
    }
}

/// The outcome of one SMTP attempt.
#[derive(Debug, PartialEq, Eq)]
enum Outcome {
    Sent,
    Transient(String),
    Permanent(String),
}

/// The one place that decides whether an SMTP failure is worth retrying: a 5xx reply is
/// permanent; 4xx replies, refused or lost connections and timeouts are transient.
fn classify(e: &lettre::transport::smtp::Error) -> Outcome {
    if e.is_permanent() {
        Outcome::Permanent(e.to_string())
    } else {
        Outcome::Transient(e.to_string())
    }
}

/// Delay before attempt `attempts + 1`: `backoff * 2^(attempts-1)`, at most `max`.
pub fn backoff_for(attempts: i32, backoff: Duration, max: Duration) -> Duration {
    let exponent = u32::try_from(attempts.saturating_sub(1))
        .unwrap_or(0)
        .min(20);
    backoff.saturating_mul(1 << exponent).min(max)
}

/// Host and port of an `smtp://` URL.
pub fn parse_smtp_url(url: &str) -> Result<(String, u16)> {
    let rest = url.trim().strip_prefix("smtp://").ok_or_else(|| {
        Error::Config(format!(
            "SMTP_URL {url:?}: only smtp://host[:port] is supported (no TLS in this build)"
        ))
    })?;
    let authority = rest.split(['/', '?']).next().unwrap_or_default();
    if authority.contains('@') {
        return Err(Error::Config(format!(
            "SMTP_URL {url:?}: credentials need TLS, which this build does not include"
        )));
    }
    let (host, port) = match authority.rsplit_once(':') {
        Some((host, port)) if !host.ends_with(']') || authority.starts_with('[') => {
            let port = port
                .parse()
                .map_err(|_| Error::Config(format!("SMTP_URL {url:?}: bad port {port:?}")))?;
            (host, port)
        }
        _ => (authority, 25),
    };
    let host = host.trim_start_matches('[').trim_end_matches(']');
    if host.is_empty() {
        return Err(Error::Config(format!("SMTP_URL {url:?}: no host")));
    }
    Ok((host.to_string(), port))
}

pub struct Sender {
    pool: PgPool,
    mailer: AsyncSmtpTransport<Tokio1Executor>,
    from: Mailbox,
    config: SenderConfig,
}

impl Sender {
    pub fn new(pool: PgPool, config: SenderConfig) -> Result<Self> {
        let (host, port) = parse_smtp_url(&config.smtp_url)?;
        let from: Mailbox = config.from.parse().map_err(|e| {
            Error::Config(format!(
                "DHANMAN_MAIL_FROM {:?} is not an address: {e}",
                config.from
            ))
        })?;
        if config.lease <= config.timeout {
            return Err(Error::Config(
                "the SMTP lease must be longer than the SMTP timeout".into(),
            ));
        }
        if config.max_attempts == 0 || config.concurrency == 0 {
            return Err(Error::Config(
                "SMTP attempts and concurrency must be at least 1".into(),
            ));
        }
        let mailer = AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous(host)
            .port(port)
            .timeout(Some(config.timeout))
            .build();
        Ok(Sender {
            pool,
            mailer,
            from,
            config,
        })
    }

    /// Sends until the task is dropped. Database outages are waited out.
    pub async fn run(self) -> Result<()> {
        self.run_until(Stop::never()).await
    }

    /// [`Sender::run`] until `stop` is asked for; then nothing more is claimed, the emails
    /// being sent are finished (each within the SMTP timeout) and this returns `Ok`.
    pub async fn run_until(self, stop: Stop) -> Result<()> {
        tracing::info!(smtp = %self.config.smtp_url, from = %self.from, "notification sender started");
        let sending = Sending {
            sender: Arc::new(self),
            listener: None,
            in_flight: tokio::task::JoinSet::new(),
        };
        companion::run_until(sending, stop).await
    }

    async fn listen(&self) -> Option<PgListener> {
        let mut listener = dhanman_plumbing::postgres::listener(&self.pool)
            .await
            .ok()?;
        listener.listen(super::CHANNEL).await.ok()?;
        Some(listener)
    }

    async fn claim(&self, limit: usize) -> std::result::Result<Vec<Claimed>, sqlx::Error> {
        let lease_ms = i64::try_from(self.config.lease.as_millis()).unwrap_or(i64::MAX);
        sqlx::query_as(
            "with due as (
                 select event_id, recipient, template from notification_deliveries
                  where (status = 'pending' and next_attempt_at <= now())
                     or (status = 'sending' and lease_until <= now())
                  order by next_attempt_at
                  limit $1
                  for update skip locked)
             update notification_deliveries d
                set status = 'sending', attempts = d.attempts + 1,
                    lease_until = now() + make_interval(secs => $2::float8 / 1000),
                    updated_at = now()
               from due
              where (d.event_id, d.recipient, d.template)
                  = (due.event_id, due.recipient, due.template)
          returning d.event_id, d.recipient, d.template, d.correlation_id, d.message_id,
                    d.subject, d.body_text, d.body_html, d.attempts",
        )
        .bind(i64::try_from(limit).unwrap_or(i64::MAX))
        .bind(lease_ms)
        .fetch_all(&self.pool)
        .await
    }

    fn message(&self, row: &Claimed) -> std::result::Result<Message, String> {
        let to: Mailbox = row
            .recipient
            .parse()
            .map_err(|e| format!("invalid address {:?}: {e}", row.recipient))?;
        Message::builder()
            .from(self.from.clone())
            .to(to)
            .subject(row.subject.clone())
            .message_id(Some(row.message_id.clone()))
            .multipart(MultiPart::alternative_plain_html(
                row.body_text.clone(),
                row.body_html.clone(),
            ))
            .map_err(|e| format!("building the message: {e}"))
    }

    async fn attempt(&self, row: &Claimed) -> Outcome {
        let message = match self.message(row) {
            Ok(m) => m,
            Err(reason) => return Outcome::Permanent(reason),
        };
        let started = Instant::now();
        let result = tokio::time::timeout(self.config.timeout, self.mailer.send(message)).await;
        metrics::histogram!("dhanman_smtp_send_duration_seconds")
            .record(started.elapsed().as_secs_f64());
        match result {
            Ok(Ok(_)) => Outcome::Sent,
            Ok(Err(e)) => classify(&e),
            Err(_) => Outcome::Transient(format!(
                "no answer from the SMTP server within {:?}",
                self.config.timeout
            )),
        }
    }

    #[tracing::instrument(skip_all, fields(correlation_id = %row.correlation_id,
        event_id = %row.event_id, recipient = %row.recipient, template = %row.template,
        attempt = row.attempts))]
    async fn deliver(self: Arc<Self>, row: Claimed) {
        let outcome = self.attempt(&row).await;
        // Recording the outcome is retried through a database outage for as long as the
        // lease lasts; past it another sender may take the row over (and, for a sent one,
        // send it again: the resend window the module documents).
        let deadline = Instant::now() + self.config.lease;
        let recorded = RECORD_RETRY
            .retry_until(
                deadline,
                || self.record(&row, &outcome),
                |e, _| tracing::warn!(error = %e, "recording a notification's outcome failed; retrying"),
            )
            .await;
        if let Err(e) = recorded {
            tracing::error!(error = %e, ?outcome, "could not record a notification's outcome");
        }
    }

    async fn record(
        &self,
        row: &Claimed,
        outcome: &Outcome,
    ) -> std::result::Result<(), sqlx::Error> {
        let template = row.template.clone();
        let mut tx = self.pool.begin().await?;
        match outcome {
            Outcome::Sent => {
                sqlx::query(
                    "update notification_deliveries
                        set status = 'sent', sent_at = now(), lease_until = null,
                            last_error = null, updated_at = now()
                      where event_id = $1 and recipient = $2 and template = $3
                        and status = 'sending' and attempts = $4",
                )
                .bind(row.event_id)
                .bind(&row.recipient)
                .bind(&row.template)
                .bind(row.attempts)
                .execute(&mut *tx)
                .await?;
                tx.commit().await?;
                metrics::counter!("dhanman_notifications_total", "template" => template, "outcome" => "sent")
                    .increment(1);
                tracing::info!("notification sent");
            }
            Outcome::Transient(error)
                if row.attempts < i32::try_from(self.config.max_attempts).unwrap_or(i32::MAX) =>
            {
                let delay = backoff_for(row.attempts, self.config.backoff, self.config.max_backoff);
                let delay_ms = i64::try_from(delay.as_millis()).unwrap_or(i64::MAX);
                sqlx::query(
                    "update notification_deliveries
                        set status = 'pending', lease_until = null, last_error = $5,
                            next_attempt_at = now() + make_interval(secs => $6::float8 / 1000),
                            updated_at = now()
                      where event_id = $1 and recipient = $2 and template = $3
                        and status = 'sending' and attempts = $4",
                )
                .bind(row.event_id)
                .bind(&row.recipient)
                .bind(&row.template)
                .bind(row.attempts)
                .bind(error)
                .bind(delay_ms)
                .execute(&mut *tx)
                .await?;
                tx.commit().await?;
                metrics::counter!("dhanman_notifications_total", "template" => template, "outcome" => "retried")
                    .increment(1);
                tracing::warn!(%error, retry_in = ?delay, "notification failed; will retry");
            }
            Outcome::Transient(error) => {
                let reason = format!("gave up after {} attempts: {error}", row.attempts);
                dead_letter(
                    &mut tx,
                    &row.key(),
                    Failure {
                        class: "exhausted",
                        reason: &reason,
                        attempts: row.attempts,
                    },
                )
                .await?;
                tx.commit().await?;
            }
            Outcome::Permanent(error) => {
                dead_letter(
                    &mut tx,
                    &row.key(),
                    Failure {
                        class: "permanent",
                        reason: error,
                        attempts: row.attempts,
                    },
                )
                .await?;
                tx.commit().await?;
            }
        }
        Ok(())
    }
}

/// The sender as the companion loop drives it: what it has claimed and is sending, and
/// its listener for new deliveries.
struct Sending {
    sender: Arc<Sender>,
    /// `None` until listening works (again); the poll interval covers the gap.
    listener: Option<PgListener>,
    in_flight: tokio::task::JoinSet<()>,
}

impl Companion for Sending {
    fn name(&self) -> &'static str {
        "notification sender"
    }

    fn poll(&self) -> Duration {
        POLL
    }

    fn retry(&self) -> Backoff {
        CLAIM_RETRY
    }

    /// Claims as many due deliveries as there is room for and starts sending them.
    async fn round(&mut self) -> Result<bool> {
        if self.listener.is_none() {
            self.listener = self.sender.listen().await;
        }
        let concurrency = self.sender.config.concurrency;
        let room = concurrency.saturating_sub(self.in_flight.len());
        if room == 0 {
            return Ok(false);
        }
        let rows = self.sender.claim(room).await?;
        let claimed_any = !rows.is_empty();
        for row in rows {
            self.in_flight.spawn(self.sender.clone().deliver(row));
        }
        Ok(claimed_any && self.in_flight.len() < concurrency)
    }

    /// A send finished (room for another), or a delivery was announced.
    async fn woken(&mut self) {
        tokio::select! {
            Some(_) = self.in_flight.join_next(), if !self.in_flight.is_empty() => {}
            () = notified(&mut self.listener) => {}
        }
    }

    async fn finish(&mut self) {
        if !self.in_flight.is_empty() {
            tracing::info!(
                sending = self.in_flight.len(),
                "stopping: finishing the emails being sent"
            );
        }
        while self.in_flight.join_next().await.is_some() {}
    }
}

/// Resolves on a notification, or when the listener is lost (it is set to `None`, and the
/// next round listens again); never without a listener.
async fn notified(listener: &mut Option<PgListener>) {
    let Some(l) = listener else {
        return std::future::pending().await;
    };
    if !matches!(l.try_recv().await, Ok(Some(_))) {
        *listener = None;
    }
}

/// Marks a delivery `dead_lettered` with its reason and puts a record describing it on
/// `dhanman.notification.commands.dlq` through the outbox, with the runtime's DLQ headers.
/// Both in the caller's transaction; a second call for the same delivery adds nothing.
pub async fn dead_letter(
    conn: &mut PgConnection,
    key: &DeliveryKey,
    failure: Failure<'_>,
) -> std::result::Result<(), sqlx::Error> {
    let row: Option<(Uuid, String, String, String, String)> = sqlx::query_as(
        "update notification_deliveries
            set status = 'dead_lettered', reason = $4, lease_until = null, updated_at = now()
          where event_id = $1 and recipient = $2 and template = $3
      returning organization_id, correlation_id, event_type, source_topic, subject",
    )
    .bind(key.event_id)
    .bind(&key.recipient)
    .bind(&key.template)
    .bind(failure.reason)
    .fetch_optional(&mut *conn)
    .await?;
    let Some((organization_id, correlation_id, event_type, source_topic, subject)) = row else {
        return Ok(());
    };
    metrics::counter!("dhanman_notifications_total", "template" => key.template.clone(), "outcome" => "dead_lettered")
        .increment(1);
    tracing::warn!(%correlation_id, event_id = %key.event_id, recipient = %key.recipient,
        template = %key.template, class = failure.class, reason = failure.reason,
        "notification dead-lettered");
    let id = Uuid::new_v5(
        &Uuid::NAMESPACE_OID,
        format!(
            "dhanman-notification-dlq/{}/{}/{}",
            key.event_id, key.recipient, key.template
        )
        .as_bytes(),
    );
    let exists: Option<(i64,)> = sqlx::query_as("select id from outbox where event_id = $1")
        .bind(id)
        .fetch_optional(&mut *conn)
        .await?;
    if exists.is_some() {
        return Ok(());
    }
    use dlq_headers::*;
    let headers = json!({
        ERROR: failure.reason,
        ERROR_CLASS: failure.class,
        SOURCE_TOPIC: source_topic,
        PROCESSOR: super::NAME,
        FAILED_AT: Utc::now().to_rfc3339(),
        ATTEMPTS: failure.attempts.to_string(),
        "correlation_id": correlation_id,
        "record_name": event_type,
    });
    let value = json!({
        "event_id": key.event_id,
        "organization_id": organization_id,
        "recipient": key.recipient,
        "template": key.template,
        "subject": subject,
        "reason": failure.reason,
    });
    let value = serde_json::to_vec(&value).unwrap_or_default();
    dhanman_plumbing::outbox::enqueue_raw(
        conn,
        dhanman_plumbing::outbox::RawRecord {
            id,
            topic: &topics::dlq(topics::NOTIFICATION_COMMANDS),
            key: Some(key.recipient.as_bytes()),
            value: &value,
            headers,
        },
    )
    .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn smtp_urls() {
        assert_eq!(
            parse_smtp_url("smtp://127.0.0.1:2525").unwrap(),
            ("127.0.0.1".into(), 2525)
        );
        assert_eq!(
            parse_smtp_url("smtp://mail.example.org").unwrap(),
            ("mail.example.org".into(), 25)
        );
        assert_eq!(
            parse_smtp_url("smtp://[::1]:2525").unwrap(),
            ("::1".into(), 2525)
        );
        assert!(parse_smtp_url("smtps://mail.example.org").is_err());
        assert!(parse_smtp_url("smtp://u:p@mail.example.org").is_err());
        assert!(parse_smtp_url("smtp://host:x").is_err());
        assert!(parse_smtp_url("smtp://").is_err());
    }

    #[test]
    fn backoff_doubles_up_to_the_cap() {
        let b = Duration::from_millis(100);
        let max = Duration::from_secs(1);
        assert_eq!(backoff_for(1, b, max), Duration::from_millis(100));
        assert_eq!(backoff_for(2, b, max), Duration::from_millis(200));
        assert_eq!(backoff_for(4, b, max), Duration::from_millis(800));
        assert_eq!(backoff_for(5, b, max), max);
        assert_eq!(backoff_for(1000, b, max), max);
    }

    #[tokio::test]
    async fn config_is_checked() {
        let pool = sqlx::postgres::PgPoolOptions::new()
            .connect_lazy("postgres://nobody@127.0.0.1:1/none")
            .unwrap();
        let mut config =
            SenderConfig::new("smtp://127.0.0.1:2525", "Dhanman <no-reply@dhanman.test>");
        assert!(Sender::new(pool.clone(), config.clone()).is_ok());
        config.from = "not an address".into();
        assert!(Sender::new(pool.clone(), config.clone()).is_err());
        config.from = "no-reply@dhanman.test".into();
        config.lease = config.timeout;
        assert!(Sender::new(pool, config).is_err());
    }
}
