//! Payroll commands: salaries posted for a pay period.

use chrono::{DateTime, Utc};
use dhanman_plumbing::outbox;
use dhanman_schemas::events::{Envelope, FieldError, SalaryPosted, check_money, check_period};
use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};
use sqlx::PgConnection;
use uuid::Uuid;

use crate::input::Amount;
use crate::{BOOKKEEPERS, Caller, Error, Result};

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewSalary {
    pub employee_id: Option<Uuid>,
    pub employee_name: Option<String>,
    pub period: Option<String>,
    pub amount: Option<Amount>,
    pub currency: Option<String>,
    /// Where the payslip is emailed; absent means no payslip email.
    pub employee_email: Option<String>,
}

/// A salary as the command side stores it.
#[derive(Debug, Serialize, sqlx::FromRow)]
pub struct Salary {
    pub salary_id: Uuid,
    pub employee_id: Uuid,
    pub employee_name: String,
    pub period: String,
    pub amount: Decimal,
    pub currency: String,
    pub employee_email: Option<String>,
    pub created_at: DateTime<Utc>,
}

#[derive(Debug, Serialize)]
pub struct PostedSalary {
    #[serde(flatten)]
    pub salary: Salary,
    /// Pass as `?consistent_with=` to a query to read after the ledger has posted it.
    pub consistency_token: Uuid,
}

/// Posts an employee's salary for a period: the row and its `SalaryPosted`, together.
pub async fn post_salary(
    conn: &mut PgConnection,
    caller: &Caller,
    input: NewSalary,
) -> Result<PostedSalary> {
    caller.require(BOOKKEEPERS, "posting a salary")?;
    post_salary_with_id(conn, caller, input, Uuid::now_v7()).await
}

/// [`post_salary`] under an id the caller chose (a salary announced by another system keeps
/// its id).
pub async fn post_salary_with_id(
    conn: &mut PgConnection,
    caller: &Caller,
    input: NewSalary,
    salary_id: Uuid,
) -> Result<PostedSalary> {
    let employee_id = input
        .employee_id
        .ok_or_else(|| FieldError::new("employee_id", "is required"))?;
    let employee_name =
        crate::input::required_line("employee_name", input.employee_name.as_deref(), 200)?;
    let period = input
        .period
        .ok_or_else(|| FieldError::new("period", "is required"))?;
    check_period("period", &period)?;
    let amount = input
        .amount
        .map(Amount::value)
        .ok_or_else(|| FieldError::new("amount", "is required"))?;
    let currency = input.currency.unwrap_or_else(|| "INR".to_string());
    check_money("amount", amount, &currency)?;
    let employee_email = match input.employee_email.as_deref().map(str::trim) {
        None | Some("") => None,
        Some(email) => {
            crate::input::check_email("employee_email", email)?;
            Some(email)
        }
    };

    let amount = amount.round_dp(2);
    let inserted: Result<Salary, sqlx::Error> = sqlx::query_as(
        "insert into salaries
             (id, organization_id, employee_id, employee_name, period, amount, currency, employee_email)
         values ($1, $2, $3, $4, $5, $6, $7, $8)
         returning id as salary_id, employee_id, employee_name, period, amount,
                   currency::text as currency, employee_email, created_at",
    )
    .bind(salary_id)
    .bind(caller.organization_id)
    .bind(employee_id)
    .bind(employee_name)
    .bind(&period)
    .bind(amount)
    .bind(&currency)
    .bind(employee_email)
    .fetch_one(&mut *conn)
    .await;
    let salary = match inserted {
        Err(sqlx::Error::Database(db)) if db.constraint() == Some("salaries_employee_period") => {
            return Err(Error::Conflict(format!(
                "period {period}: a salary for employee {employee_id} is already posted"
            )));
        }
        other => other?,
    };

    let event = SalaryPosted {
        envelope: Envelope::new(caller.organization_id, &caller.correlation_id, None),
        salary_id,
        employee_id,
        period,
        amount,
        currency,
    };
    let consistency_token = outbox::enqueue(conn, &event).await?;
    tracing::info!(%salary_id, %employee_id, %amount, event_id = %consistency_token, "salary posted");
    Ok(PostedSalary {
        salary,
        consistency_token,
    })
}

/// Who may read salaries (amounts and the employee's address): the roles that keep the
/// books. Approvers and managers give approvals, which need neither.
pub const SALARY_READERS: &[&str] = BOOKKEEPERS;

/// The salary `id` of the caller's organization, if there is one; only for
/// [`SALARY_READERS`].
pub async fn find_salary(
    conn: &mut PgConnection,
    caller: &Caller,
    id: Uuid,
) -> Result<Option<Salary>> {
    caller.require(SALARY_READERS, "reading a salary")?;
    let salary = sqlx::query_as(
        "select id as salary_id, employee_id, employee_name, period, amount,
                currency::text as currency, employee_email, created_at
           from salaries where id = $1 and organization_id = $2",
    )
    .bind(id)
    .bind(caller.organization_id)
    .fetch_optional(conn)
    .await?;
    Ok(salary)
}
