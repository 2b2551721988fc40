//! Payroll commands and the salary they post.

use axum::Json;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use dhanman_producers::payroll::{self, NewSalary, Salary};

use super::sales::{CommandReply, Gate, run_command};
use crate::extract::{Auth, JsonBody, path_uuid};
use crate::{ApiError, AppState};

pub async fn post_salary(
    State(state): State<AppState>,
    Auth(caller): Auth,
    headers: HeaderMap,
    body: JsonBody<NewSalary>,
) -> Result<CommandReply, ApiError> {
    run_command(
        &state,
        &headers,
        &caller,
        Gate::bookkeepers("posting a salary"),
        "/v1/salaries",
        body,
        StatusCode::CREATED,
        payroll::post_salary,
    )
    .await
}

/// A salary: only for the roles that keep the books (`payroll::SALARY_READERS`); others
/// are 403 naming their role.
pub async fn salary(
    State(state): State<AppState>,
    Auth(caller): Auth,
    Path(id): Path<String>,
) -> Result<Json<Salary>, ApiError> {
    let salary_id = path_uuid(&id, "salary")?;
    let mut conn = state.pool.acquire().await?;
    payroll::find_salary(&mut conn, &caller, salary_id)
        .await?
        .map(Json)
        .ok_or_else(|| ApiError::NotFound("salary".into()))
}
