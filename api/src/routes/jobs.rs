//! Runs of scheduled jobs, as recorded in `job_runs`: the caller's organization only.

use axum::Json;
use axum::extract::State;
use chrono::{DateTime, Utc};
use serde::Serialize;
use serde_json::{Value, json};
use uuid::Uuid;

use crate::extract::Auth;
use crate::{ApiError, AppState};

#[derive(Debug, Serialize, sqlx::FromRow)]
struct JobRun {
    id: Uuid,
    run_id: Uuid,
    job: String,
    period: Option<String>,
    started_at: DateTime<Utc>,
    finished_at: Option<DateTime<Utc>>,
    created: i32,
    skipped: i32,
    failed: i32,
    failures: Value,
}

/// The newest 100 runs, newest first.
pub async fn runs(
    State(state): State<AppState>,
    Auth(caller): Auth,
) -> Result<Json<Value>, ApiError> {
    let runs: Vec<JobRun> = sqlx::query_as(
        "select id, run_id, job, period, started_at, finished_at, created, skipped, failed,
                failures
           from job_runs where organization_id = $1
          order by started_at desc, id desc limit 100",
    )
    .bind(caller.organization_id)
    .fetch_all(&state.pool)
    .await?;
    Ok(Json(json!({ "runs": runs })))
}
