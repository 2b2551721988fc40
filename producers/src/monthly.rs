//! The monthly-invoices job: one invoice per active customer with a monthly charge and
//! period, through the same command as `POST /v1/invoices`.
//!
//! Exactly once is the database's: each invoice's transaction first claims its
//! `monthly_invoices` row (primary key organization, customer, period). A concurrent run
//! waits on the key and then finds it taken, which is a skip; a rolled-back invoice
//! releases its claim. A failure is one customer's and the run goes on.

use chrono::{Days, NaiveDate};
use dhanman_schemas::events::{FieldError, check_period};
use rust_decimal::Decimal;
use serde::Serialize;
use sqlx::PgPool;
use uuid::Uuid;

use crate::sales::{self, NewInvoice};
use crate::{Caller, Result};

/// The name under which runs are recorded in `job_runs`.
pub const JOB: &str = "monthly-invoices";

#[derive(Debug, Clone, Serialize)]
pub struct Failure {
    pub organization_id: Uuid,
    pub customer_id: Uuid,
    pub reason: String,
}

/// What one invocation did, over every organization it covered.
#[derive(Debug, Serialize)]
pub struct Summary {
    pub run_id: Uuid,
    pub period: String,
    pub created: u32,
    pub skipped: u32,
    pub failed: u32,
    pub failures: Vec<Failure>,
}

enum Outcome {
    Created,
    Skipped,
}

/// Generates `period`'s invoices for `organization`, or for every organization. Issue
/// date is the first of the period, due `due_days` later. `period` must be YYYY-MM.
pub async fn run(
    pool: &PgPool,
    period: &str,
    organization: Option<Uuid>,
    due_days: u32,
) -> Result<Summary> {
    check_period("period", period)?;
    let issue_date = NaiveDate::parse_from_str(&format!("{period}-01"), "%Y-%m-%d")
        .map_err(|_| FieldError::new("period", "must be a month as YYYY-MM"))?;
    let due_date = issue_date
        .checked_add_days(Days::new(due_days.into()))
        .ok_or_else(|| FieldError::new("due_days", "is too large"))?;
    let organizations: Vec<(Uuid,)> = match organization {
        Some(id) => {
            sqlx::query_as("select id from organizations where id = $1")
                .bind(id)
                .fetch_all(pool)
                .await?
        }
        None => {
            sqlx::query_as("select id from organizations order by id")
                .fetch_all(pool)
                .await?
        }
    };
    if organizations.is_empty() && organization.is_some() {
        return Err(crate::Error::NotFound("organization"));
    }

    let run_id = Uuid::now_v7();
    let mut summary = Summary {
        run_id,
        period: period.to_string(),
        created: 0,
        skipped: 0,
        failed: 0,
        failures: Vec::new(),
    };
    for (organization_id,) in organizations {
        let row_id = Uuid::now_v7();
        sqlx::query(
            "insert into job_runs (id, run_id, job, organization_id, period)
             values ($1, $2, $3, $4, $5)",
        )
        .bind(row_id)
        .bind(run_id)
        .bind(JOB)
        .bind(organization_id)
        .bind(period)
        .execute(pool)
        .await?;
        let caller = Caller {
            organization_id,
            role: "system".into(),
            user_id: None,
            correlation_id: format!("{JOB}-{run_id}"),
        };
        let customers: Vec<(Uuid, Option<String>, Decimal, String)> = sqlx::query_as(
            "select id, unit, monthly_charge, monthly_currency::text from customers
              where organization_id = $1 and active and monthly_charge is not null
              order by id",
        )
        .bind(organization_id)
        .fetch_all(pool)
        .await?;
        let (mut created, mut skipped, mut failures) = (0u32, 0u32, Vec::new());
        for (customer_id, unit, charge, currency) in customers {
            let input = NewInvoice {
                customer_id: Some(customer_id),
                amount: Some(crate::input::Amount(charge)),
                currency: Some(currency.trim().to_string()),
                due_date: Some(crate::input::Day(due_date)),
                issue_date: Some(crate::input::Day(issue_date)),
                invoice_number: Some(invoice_number(period, customer_id, unit.as_deref())),
                description: Some(format!("Monthly charge {period}")),
                period: Some(period.to_string()),
            };
            match invoice_customer(pool, &caller, input).await {
                Ok(Outcome::Created) => created += 1,
                Ok(Outcome::Skipped) => skipped += 1,
                Err(e) => {
                    tracing::warn!(%organization_id, %customer_id, error = %e, "monthly invoice failed");
                    failures.push(Failure {
                        organization_id,
                        customer_id,
                        reason: e.to_string(),
                    });
                }
            }
        }
        let recorded: Vec<_> = failures
            .iter()
            .map(
                |f: &Failure| serde_json::json!({"customer_id": f.customer_id, "reason": f.reason}),
            )
            .collect();
        sqlx::query(
            "update job_runs set finished_at = now(), created = $2, skipped = $3, failed = $4,
                                 failures = $5
              where id = $1",
        )
        .bind(row_id)
        .bind(i32::try_from(created).unwrap_or(i32::MAX))
        .bind(i32::try_from(skipped).unwrap_or(i32::MAX))
        .bind(i32::try_from(failures.len()).unwrap_or(i32::MAX))
        .bind(serde_json::Value::Array(recorded))
        .execute(pool)
        .await?;
        record_metrics(created, skipped, failures.len());
        summary.created += created;
        summary.skipped += skipped;
        summary.failed += u32::try_from(failures.len()).unwrap_or(u32::MAX);
        summary.failures.extend(failures);
    }
    Ok(summary)
}

/// The job's outcome counters, per customer: `dhanman_job_invoices_total{job, outcome}`
/// (`created`, `skipped`, `failed`), and when the job last finished an organization.
fn record_metrics(created: u32, skipped: u32, failed: usize) {
    for (outcome, n) in [
        ("created", u64::from(created)),
        ("skipped", u64::from(skipped)),
        ("failed", failed as u64),
    ] {
        metrics::counter!("dhanman_job_invoices_total", "job" => JOB, "outcome" => outcome)
            .increment(n);
    }
    metrics::gauge!("dhanman_job_last_finished_timestamp_seconds", "job" => JOB)
        .set(chrono::Utc::now().timestamp() as f64);
}

/// `<period>-<unit>`, or `<period>-<last 8 hex digits of the customer id>` without a unit
/// (the last: a v7 id begins with its creation time, shared by customers created together).
fn invoice_number(period: &str, customer_id: Uuid, unit: Option<&str>) -> String {
    match unit.map(str::trim).filter(|u| !u.is_empty()) {
        Some(unit) => format!("{period}-{unit}"),
        None => {
            let id = customer_id.simple().to_string();
            format!("{period}-{}", &id[id.len() - 8..])
        }
    }
}

/// One customer's invoice in its own transaction: claim, then the invoice command.
#[tracing::instrument(skip_all, fields(customer_id = ?input.customer_id))]
async fn invoice_customer(pool: &PgPool, caller: &Caller, input: NewInvoice) -> Result<Outcome> {
    let mut tx = pool.begin().await?;
    let invoice_id = Uuid::now_v7();
    let claimed = sqlx::query(
        "insert into monthly_invoices (organization_id, customer_id, period, invoice_id)
         values ($1, $2, $3, $4) on conflict do nothing",
    )
    .bind(caller.organization_id)
    .bind(input.customer_id)
    .bind(&input.period)
    .bind(invoice_id)
    .execute(&mut *tx)
    .await?
    .rows_affected();
    if claimed == 0 {
        return Ok(Outcome::Skipped);
    }
    sales::create_invoice_with_id(&mut tx, caller, input, invoice_id, sales::FirstEmail::Send)
        .await?;
    tx.commit().await?;
    Ok(Outcome::Created)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn invoice_numbers_use_the_unit_else_a_short_id() {
        let id: Uuid = "0193a1b2-c3d4-7e5f-8a9b-0c1d2e3f4a5b".parse().unwrap();
        assert_eq!(
            invoice_number("2026-12", id, Some(" A-101 ")),
            "2026-12-A-101"
        );
        assert_eq!(invoice_number("2026-12", id, None), "2026-12-2e3f4a5b");
        assert_eq!(invoice_number("2026-12", id, Some("")), "2026-12-2e3f4a5b");
    }
}
