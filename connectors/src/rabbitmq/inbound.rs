//! RabbitMQ → the pipeline. The bridge consumes its two durable queues with a prefetch,
//! takes what has arrived as one batch, and applies the batch in one Postgres transaction:
//! each message, inside a savepoint, first claims its message id in `rabbitmq_inbound`
//! (a message already there is a redelivery: nothing is run), then runs the command the
//! API runs for the same thing, whose state and event go to the outbox in that
//! transaction. Only after the commit are the messages acknowledged, so a crash or a lost
//! connection redelivers them, and the claim makes the redelivery a no-op.
//!
//! A message that cannot be mapped, or that its command refuses (validation, an unknown
//! customer, order or user, a conflict), is rolled back to its savepoint and published to
//! the dead-letter exchange with the reason in the `dlq.*` headers (confirmed before it is
//! acknowledged), and counted. A failure of the database is never a dead letter: the
//! batch is retried until it commits.

use std::time::Duration;

use chrono::Utc;
use dhanman_producers::invoice_email::{self, EmailInvoice};
use dhanman_producers::{Caller, Error as CommandError, purchase, sales, users};
use dhanman_schemas::events::FieldError;
use dhanman_schemas::topics::dlq_headers;
use futures_util::{FutureExt, StreamExt};
use lapin::BasicProperties;
use lapin::Channel;
use lapin::Confirmation;
use lapin::message::Delivery;
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicPublishOptions, BasicQosOptions,
    ConfirmSelectOptions,
};
use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};
use sha2::{Digest, Sha256};
use sqlx::{PgConnection, PgPool};
use uuid::Uuid;

use super::mapping::{self, Inbound};
use super::{
    DEAD_LETTERS, Error, FROM_RABBITMQ, INBOUND, KAFKA_ORIGIN_HEADER, MESSAGE_ID_HEADER, ORIGIN,
    ORIGIN_HEADER, PROCESSOR, Settings, StopSignal,
};

/// The role the bridge's commands run with: the .NET services keep the books.
const ROLE: &str = "accountant";

/// Runs the inbound side until `stop`, reconnecting after RabbitMQ or Postgres failures.
pub async fn run(pool: PgPool, settings: Settings, stop: StopSignal) {
    let settings = &settings;
    super::supervise("inbound", stop, |stop, careful| {
        session(&pool, settings, careful, stop)
    })
    .await
}

/// How a round of consuming ended without a failure.
enum Round {
    Stopped,
    /// A careful round read what it had to: consume with the full prefetch again.
    Relax,
}

/// One connection. After a delivery that could not be read (`careful`), it first consumes
/// one message at a time: the unreadable message comes back first (RabbitMQ returns the
/// deliveries of a dropped connection to the head of the queue), so it alone is counted
/// again each time it drops the connection, not the prefetch of innocent messages around
/// it, until RabbitMQ dead-letters it at [`super::DELIVERY_LIMIT`]. Once a prefetch's worth
/// of messages has been applied that way, it goes back to the full prefetch.
async fn session(
    pool: &PgPool,
    settings: &Settings,
    mut careful: bool,
    mut stop: StopSignal,
) -> Result<(), Error> {
    let connection = super::connect(&settings.url, "inbound").await?;
    let dead_letters = connection.create_channel().await?;
    super::declare(&dead_letters, settings).await?;
    dead_letters
        .confirm_select(ConfirmSelectOptions::default())
        .await?;
    loop {
        let channel = connection.create_channel().await?;
        let prefetch = if careful { 1 } else { settings.prefetch };
        channel
            .basic_qos(prefetch, BasicQosOptions::default())
            .await?;
        let mut streams = Vec::new();
        for queue in [settings.events_queue(), settings.commands_queue()] {
            let consumer = channel
                .basic_consume(
                    queue.as_str().into(),
                    format!("dhanman-bridge-{}", Uuid::new_v4().simple()).into(),
                    BasicConsumeOptions::default(),
                    FieldTable::default(),
                )
                .await?;
            streams.push(consumer);
        }
        let deliveries = futures_util::stream::select_all(streams);
        metrics::gauge!(super::CONNECTED, "side" => "inbound").set(1.0);
        tracing::info!(
            events = %settings.events_queue(),
            commands = %settings.commands_queue(),
            prefetch,
            "RabbitMQ bridge consuming"
        );
        let until = careful.then_some(usize::from(settings.prefetch));
        match consume(
            pool,
            settings,
            &connection,
            &dead_letters,
            deliveries,
            until,
            &mut stop,
        )
        .await?
        {
            Round::Stopped => return Ok(()),
            Round::Relax => {
                // At most the one delivery in flight goes back, counted once more.
                super::answered(
                    "closing a channel",
                    channel.close(200, "full prefetch".into()),
                )
                .await?;
                careful = false;
            }
        }
    }
}

/// Applies batches of deliveries until `stop`, or until `until` messages have been acknowledged.
async fn consume(
    pool: &PgPool,
    settings: &Settings,
    connection: &lapin::Connection,
    dead_letters: &Channel,
    mut deliveries: impl futures_util::Stream<Item = lapin::Result<Delivery>> + Unpin,
    until: Option<usize>,
    stop: &mut StopSignal,
) -> Result<Round, Error> {
    let mut acknowledged = 0;
    let mut checks = super::connection_checks();
    loop {
        if until.is_some_and(|until| acknowledged >= until) {
            return Ok(Round::Relax);
        }
        let first = tokio::select! {
            next = deliveries.next() => next,
            () = stop.wait() => return Ok(Round::Stopped),
            _ = checks.tick() => {
                super::still_connected(connection)?;
                continue;
            }
        };
        let Some(first) = first else {
            return Err(Error::Unconfirmed("the consumers were cancelled".into()));
        };
        let mut batch = vec![first?];
        // What has already arrived joins the batch; nothing waits for more.
        while batch.len() < settings.batch_size {
            match deliveries.next().now_or_never() {
                Some(Some(delivery)) => batch.push(delivery?),
                _ => break,
            }
        }
        acknowledged += batch.len();
        handle(pool, settings, dead_letters, batch, stop).await?;
    }
}

/// What becomes of one delivery.
enum Plan {
    /// Published by this pipeline's outbound side: acknowledged, nothing else.
    Echo,
    Dead {
        class: &'static str,
        reason: String,
    },
    Apply(Box<Message>),
}

struct Message {
    message_id: String,
    type_name: String,
    correlation_id: String,
    inbound: Inbound,
    /// The SHA-256 of the type and the body, kept with the claim.
    digest: Vec<u8>,
}

/// What the transaction did with an applied message.
enum Applied {
    Done,
    Duplicate,
    Refused(String),
}

async fn handle(
    pool: &PgPool,
    settings: &Settings,
    dead_letters: &Channel,
    batch: Vec<Delivery>,
    stop: &mut StopSignal,
) -> Result<(), Error> {
    let mut plans: Vec<Plan> = batch.iter().map(plan_caught).collect();
    let mut backoff = Duration::from_millis(100);
    let outcomes = loop {
        match apply(pool, settings, &plans).await {
            Ok(outcomes) => break outcomes,
            Err(e) => {
                tracing::warn!(error = %e, retry_in = ?backoff, "applying a RabbitMQ batch failed; retrying it");
                tokio::select! {
                    () = tokio::time::sleep(backoff) => {}
                    // Unacknowledged: RabbitMQ hands the batch to the next session.
                    () = stop.wait() => return Ok(()),
                }
                backoff = (backoff * 2).min(Duration::from_secs(5));
            }
        }
    };
    for (i, outcome) in outcomes.into_iter().enumerate() {
        match outcome {
            Some(Applied::Refused(reason)) => {
                plans[i] = Plan::Dead {
                    class: "rejected",
                    reason,
                }
            }
            Some(Applied::Duplicate) => {
                tracing::info!(message_id = %message_of(&plans[i]), "redelivered message already applied");
                metrics::counter!(INBOUND, "outcome" => "duplicate").increment(1);
            }
            Some(Applied::Done) => metrics::counter!(INBOUND, "outcome" => "applied").increment(1),
            None => {}
        }
    }
    for (delivery, plan) in batch.iter().zip(&plans) {
        match plan {
            Plan::Dead { class, reason } => {
                super::answered(
                    "a dead letter's publish",
                    dead_letter(dead_letters, settings, delivery, class, reason),
                )
                .await?;
                metrics::counter!(INBOUND, "outcome" => "dead_lettered").increment(1);
                metrics::counter!(DEAD_LETTERS, "class" => *class).increment(1);
            }
            Plan::Echo => metrics::counter!(INBOUND, "outcome" => "echo").increment(1),
            Plan::Apply(_) => {}
        }
    }
    for delivery in &batch {
        super::answered(
            "an acknowledgement",
            delivery.ack(BasicAckOptions::default()),
        )
        .await?;
    }
    Ok(())
}

/// The claim of a message whose id is not kept as it is: the digest of the id.
const HASHED_ID: &str = "id-sha256:";
/// The claim of a message without an id: the digest of its type and body.
const CONTENT_ID: &str = "sha256:";

fn message_of(plan: &Plan) -> &str {
    match plan {
        Plan::Apply(m) => &m.message_id,
        _ => "",
    }
}

fn header<'a>(delivery: &'a Delivery, name: &str) -> Option<&'a AMQPValue> {
    delivery.properties.headers().as_ref()?.inner().get(name)
}

/// The SHA-256 of `parts` one after the other.
fn sha256(parts: &[&[u8]]) -> Vec<u8> {
    let mut hash = Sha256::new();
    for part in parts {
        hash.update(part);
    }
    hash.finalize().to_vec()
}

/// `bytes` in lowercase hex.
fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Printable ASCII, at most `max` characters: what a message may put in an id or a log.
fn printable(value: &str, max: usize) -> String {
    value
        .chars()
        .filter(|c| c.is_ascii_graphic() || *c == ' ')
        .take(max)
        .collect()
}

/// [`plan`], with a panic reading the message taken as that message's fault: it is
/// dead-lettered with the panic's message, and the messages around it go on (a panic that
/// ended the bridge came back with the message at every start, until RabbitMQ's delivery
/// limit dead-lettered it and the batch around it unread).
fn plan_caught(delivery: &Delivery) -> Plan {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| plan(delivery))).unwrap_or_else(
        |payload| Plan::Dead {
            class: "malformed",
            reason: format!(
                "reading the message failed: {}",
                dhanman_plumbing::panic_message(&*payload)
            ),
        },
    )
}

fn plan(delivery: &Delivery) -> Plan {
    let echo = match header(delivery, ORIGIN_HEADER) {
        Some(AMQPValue::LongString(s)) => s.as_bytes() == ORIGIN.as_bytes(),
        Some(AMQPValue::ShortString(s)) => s.as_str() == ORIGIN,
        _ => false,
    };
    if echo {
        return Plan::Echo;
    }
    let properties = &delivery.properties;
    let content_type = properties.content_type().as_ref().map(|c| c.as_str());
    if let Some(content_type) = content_type
        && !content_type
            .to_ascii_lowercase()
            .starts_with("application/json")
    {
        return Plan::Dead {
            class: "malformed",
            reason: format!(
                "content type {:?} is not application/json",
                printable(content_type, 64)
            ),
        };
    }
    let amqp_type = properties.kind().as_ref().map(|k| k.as_str());
    let Some(type_name) = mapping::type_name(amqp_type, &delivery.data) else {
        return Plan::Dead {
            class: "unknown-type",
            reason: "the message has no type: neither the AMQP type property nor a $type, \
                     MessageType or EventType property in its body"
                .into(),
        };
    };
    let inbound = match mapping::parse(&type_name, &delivery.data) {
        Ok(inbound) => inbound,
        Err(e) => {
            return Plan::Dead {
                class: e.class,
                reason: e.reason,
            };
        }
    };
    let digest = sha256(&[type_name.as_bytes(), &[0], &delivery.data]);
    let message_id = match properties.message_id().as_ref().map(|m| m.as_str()) {
        Some(id)
            if !id.trim().is_empty()
                && printable(id, 200) == id
                && !id.starts_with(HASHED_ID)
                && !id.starts_with(CONTENT_ID) =>
        {
            id.to_string()
        }
        // An id with characters the table does not keep as they are, longer than it keeps,
        // or in the form of the ids made here: its digest, so that two ids never become one
        // (the second message would be taken for the first's redelivery and dropped).
        Some(id) if !id.trim().is_empty() => {
            format!("{HASHED_ID}{}", hex(&sha256(&[id.as_bytes()])))
        }
        // A publisher that sets no id: the content is the identity (its event's own ids).
        _ => format!("{CONTENT_ID}{}", hex(&digest)),
    };
    let correlation_id = match properties.correlation_id().as_ref().map(|c| c.as_str()) {
        Some(c) if !printable(c, 128).trim().is_empty() => printable(c, 128),
        _ => message_id.clone(),
    };
    Plan::Apply(Box::new(Message {
        message_id,
        type_name,
        correlation_id,
        inbound,
        digest,
    }))
}

/// Applies the batch's messages in one transaction, each in a savepoint; `None` for the
/// deliveries that are not applied. An error is the database's: nothing was committed.
async fn apply(
    pool: &PgPool,
    settings: &Settings,
    plans: &[Plan],
) -> Result<Vec<Option<Applied>>, sqlx::Error> {
    let mut tx = pool.begin().await?;
    let mut outcomes = Vec::with_capacity(plans.len());
    for plan in plans {
        let Plan::Apply(message) = plan else {
            outcomes.push(None);
            continue;
        };
        sqlx::query("savepoint message").execute(&mut *tx).await?;
        let outcome = apply_one(&mut tx, settings, message).await;
        let outcome = match outcome {
            Ok(applied) => {
                sqlx::query("release savepoint message")
                    .execute(&mut *tx)
                    .await?;
                applied
            }
            Err(e) => match refusal(&e) {
                Some(reason) => {
                    sqlx::query("rollback to savepoint message")
                        .execute(&mut *tx)
                        .await?;
                    tracing::warn!(message_id = %message.message_id, r#type = %message.type_name, %reason, "message refused; dead-lettering it");
                    Applied::Refused(format!("{}: {reason}", message.type_name))
                }
                None => {
                    return Err(match e {
                        CommandError::Database(e) => e,
                        other => sqlx::Error::Protocol(other.to_string()),
                    });
                }
            },
        };
        outcomes.push(Some(outcome));
    }
    tx.commit().await?;
    Ok(outcomes)
}

/// Why a command refused a message for what it holds (no retry helps), or `None` for a
/// failure of the database.
fn refusal(e: &CommandError) -> Option<String> {
    match e {
        CommandError::Database(sqlx::Error::Database(db)) => {
            // Integrity and data errors (a duplicate id, a value out of range) are the
            // message's; anything else is the database's.
            let code = db.code().unwrap_or_default();
            (code.starts_with("23") || code.starts_with("22")).then(|| db.message().to_string())
        }
        CommandError::Database(_) => None,
        other => Some(other.to_string()),
    }
}

async fn apply_one(
    conn: &mut PgConnection,
    settings: &Settings,
    message: &Message,
) -> Result<Applied, CommandError> {
    let claimed = sqlx::query(
        "insert into rabbitmq_inbound (message_id, organization_id, message_type, queue,
                                       correlation_id, body_sha256)
         values ($1, $2, $3, $4, $5, $6) on conflict do nothing",
    )
    .bind(&message.message_id)
    .bind(settings.organization_id)
    .bind(&message.type_name)
    .bind(&settings.queue_prefix)
    .bind(&message.correlation_id)
    .bind(&message.digest)
    .execute(&mut *conn)
    .await?
    .rows_affected();
    if claimed == 0 {
        // A redelivery is the same message; the same id on another one is the publisher's
        // mistake, which dropping as a redelivery would hide.
        let before: Option<Vec<u8>> =
            sqlx::query_scalar("select body_sha256 from rabbitmq_inbound where message_id = $1")
                .bind(&message.message_id)
                .fetch_one(&mut *conn)
                .await?;
        return Ok(match before {
            Some(digest) if digest != message.digest => Applied::Refused(format!(
                "{}: message_id {} was used before by a message of another type or body; \
                 each message needs an id of its own",
                message.type_name,
                printable(&message.message_id, 200)
            )),
            _ => Applied::Duplicate,
        });
    }
    let caller = Caller {
        organization_id: settings.organization_id,
        role: ROLE.to_string(),
        user_id: None,
        correlation_id: message.correlation_id.clone(),
    };
    let event_id = run_command(conn, settings, &caller, &message.inbound).await?;
    if let Some(event_id) = event_id {
        sqlx::query("update rabbitmq_inbound set event_id = $2 where message_id = $1")
            .bind(&message.message_id)
            .bind(event_id)
            .execute(&mut *conn)
            .await?;
        // The echo guard: the outbound side does not send this event back to RabbitMQ.
        sqlx::query("update outbox set headers = (headers::jsonb || $2)::json where event_id = $1")
            .bind(event_id)
            .bind(serde_json::json!({
                KAFKA_ORIGIN_HEADER: FROM_RABBITMQ,
                MESSAGE_ID_HEADER: message.message_id,
            }))
            .execute(&mut *conn)
            .await?;
    }
    tracing::info!(message_id = %message.message_id, r#type = %message.type_name, event_id = ?event_id, correlation_id = %message.correlation_id, "message applied");
    Ok(Applied::Done)
}

/// The user a message names as acting, with their role, from the organization's users.
async fn acting_user(
    conn: &mut PgConnection,
    caller: &Caller,
    user_id: Uuid,
    field: &str,
) -> Result<Caller, CommandError> {
    let role: Option<(String,)> =
        sqlx::query_as("select role from users where id = $1 and organization_id = $2")
            .bind(user_id)
            .bind(caller.organization_id)
            .fetch_optional(&mut *conn)
            .await?;
    let (role,) = role.ok_or_else(|| {
        dhanman_schemas::events::FieldError::new(field, "no such user in this organization")
    })?;
    Ok(Caller {
        role,
        user_id: Some(user_id),
        ..caller.clone()
    })
}

/// Runs the message's command; returns the event it caused.
async fn run_command(
    conn: &mut PgConnection,
    settings: &Settings,
    caller: &Caller,
    inbound: &Inbound,
) -> Result<Option<Uuid>, CommandError> {
    // The inputs are moved into the commands; a batch retried after a database failure
    // maps its messages again from the same bytes, so cloning here is what keeps them.
    let event = match inbound.clone() {
        Inbound::InvoiceCreated { invoice_id, input } => {
            sales::create_invoice_with_id(
                conn,
                caller,
                input,
                invoice_id,
                sales::FirstEmail::NotOurs,
            )
            .await?
            .consistency_token
        }
        Inbound::PaymentReceived { payment_id, input } => {
            sales::record_manual_payment_with_id(conn, caller, input, payment_id)
                .await?
                .consistency_token
        }
        Inbound::BillCreated { bill_id, input } => {
            purchase::create_bill_with_id(conn, caller, input, bill_id)
                .await?
                .consistency_token
        }
        Inbound::POSubmitted {
            po_id,
            requested_by,
            input,
        } => {
            let requester = acting_user(conn, caller, requested_by, "RequestedBy").await?;
            return Ok(purchase::submit_order_with_id(
                conn,
                &requester,
                input,
                settings.policy,
                po_id,
            )
            .await?
            .consistency_token);
        }
        Inbound::POApproved {
            po_id,
            approved_by,
            comment,
        } => {
            let approver = acting_user(conn, caller, approved_by, "ApprovedBy").await?;
            let decision = purchase::Decision { comment };
            return Ok(purchase::approve_order(conn, &approver, po_id, decision)
                .await?
                .consistency_token);
        }
        Inbound::SalaryPosted { salary_id, input } => {
            dhanman_producers::payroll::post_salary_with_id(conn, caller, input, salary_id)
                .await?
                .consistency_token
        }
        Inbound::UserCreated { user_id, input } => {
            users::insert_user_with_id(conn, caller, input, user_id)
                .await?
                .1
        }
        Inbound::SendInvoiceEmail {
            invoice_id,
            customer_id,
            template,
        } => {
            let input = EmailInvoice {
                template: Some(template.to_string()),
            };
            let issued = invoice_email::email_invoice(conn, caller, invoice_id, input).await?;
            // The message's savepoint takes the command back with this refusal.
            if issued.customer_id != customer_id {
                return Err(FieldError::new("CustomerId", "is not the invoice's customer").into());
            }
            issued.command_id
        }
    };
    Ok(Some(event))
}

/// Publishes a delivery to the dead-letter exchange with the reason, and waits for
/// RabbitMQ's confirm.
async fn dead_letter(
    channel: &Channel,
    settings: &Settings,
    delivery: &Delivery,
    class: &str,
    reason: &str,
) -> Result<(), Error> {
    let mut headers = delivery.properties.headers().clone().unwrap_or_default();
    let text = |s: &str| AMQPValue::LongString(LongString::from(s.as_bytes().to_vec()));
    let source = if delivery.exchange.as_str() == settings.commands_exchange {
        settings.commands_queue()
    } else {
        settings.events_queue()
    };
    for (name, value) in [
        (dlq_headers::ERROR, reason.to_string()),
        (dlq_headers::ERROR_CLASS, class.to_string()),
        (dlq_headers::SOURCE_TOPIC, source.clone()),
        (dlq_headers::PROCESSOR, PROCESSOR.to_string()),
        (dlq_headers::FAILED_AT, Utc::now().to_rfc3339()),
        (dlq_headers::ATTEMPTS, "1".to_string()),
        (
            "dlq.source.exchange",
            delivery.exchange.as_str().to_string(),
        ),
        (
            "dlq.source.routing_key",
            delivery.routing_key.as_str().to_string(),
        ),
    ] {
        headers.insert(ShortString::from(name), text(&value));
    }
    // Kept as the message had them, but for three: an `expiration` would take the dead
    // letter out of its queue (the message itself is acknowledged and gone), a `user_id`
    // names the publisher's RabbitMQ user, which RabbitMQ refuses from the bridge's (and the
    // whole batch waited behind the refusal), and a dead letter is persistent. The first
    // two go in headers of their own.
    let original = &delivery.properties;
    for (name, value) in [
        ("dlq.original.expiration", original.expiration()),
        ("dlq.original.user_id", original.user_id()),
    ] {
        if let Some(value) = value {
            headers.insert(ShortString::from(name), text(value.as_str()));
        }
    }
    let properties = dead_letter_properties(original).with_headers(headers);
    let confirmation = channel
        .basic_publish(
            settings.dead_letter_exchange.as_str().into(),
            source.as_str().into(),
            BasicPublishOptions::default(),
            &delivery.data,
            properties,
        )
        .await?
        .await?;
    match confirmation {
        Confirmation::Ack(_) => {
            tracing::warn!(%class, %reason, exchange = %settings.dead_letter_exchange, "message dead-lettered");
            Ok(())
        }
        other => Err(Error::Unconfirmed(format!("dead letter: {other:?}"))),
    }
}

/// `original`'s properties but its headers, `expiration` and `user_id`, persistent.
fn dead_letter_properties(original: &BasicProperties) -> BasicProperties {
    let mut kept = BasicProperties::default().with_delivery_mode(2);
    if let Some(v) = original.content_type() {
        kept = kept.with_content_type(v.clone());
    }
    if let Some(v) = original.content_encoding() {
        kept = kept.with_content_encoding(v.clone());
    }
    if let Some(v) = original.priority() {
        kept = kept.with_priority(*v);
    }
    if let Some(v) = original.correlation_id() {
        kept = kept.with_correlation_id(v.clone());
    }
    if let Some(v) = original.reply_to() {
        kept = kept.with_reply_to(v.clone());
    }
    if let Some(v) = original.message_id() {
        kept = kept.with_message_id(v.clone());
    }
    if let Some(v) = original.timestamp() {
        kept = kept.with_timestamp(*v);
    }
    if let Some(v) = original.kind() {
        kept = kept.with_type(v.clone());
    }
    if let Some(v) = original.app_id() {
        kept = kept.with_app_id(v.clone());
    }
    if let Some(v) = original.cluster_id() {
        kept = kept.with_cluster_id(v.clone());
    }
    kept
}
