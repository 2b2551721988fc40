//! Runs of scheduled jobs, as recorded in `job_runs`: the caller's organization only.

use axum::Json;
use axum::extract::State;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use uuid::Uuid;

use crate::extract::{Auth, Params};
use crate::page::PageRequest;
use crate::{ApiError, AppState};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RunsQuery {
    pub limit: Option<String>,
    pub after: Option<String>,
}

#[derive(Debug, Serialize)]
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

/// Runs, newest first, a page at a time.
pub async fn runs(
    State(state): State<AppState>,
    Auth(caller): Auth,
    Params(q): Params<RunsQuery>,
) -> Result<Json<Value>, ApiError> {
    let page = PageRequest::<(DateTime<Utc>, Uuid)>::parse(q.limit.as_deref(), q.after.as_deref())?;
    let (after_at, after_id) = page.after.unzip();
    let mut runs = sqlx::query_as!(
        JobRun,
        "select id, run_id, job, period, started_at, finished_at, created, skipped, failed,
                failures
           from job_runs where organization_id = $1
            and ($2::timestamptz is null or (started_at, id) < ($2, $3))
          order by started_at desc, id desc limit $4",
        caller.organization_id,
        after_at,
        after_id,
        page.fetch()
    )
    .fetch_all(&state.pool)
    .await?;
    let next = page.finish(&mut runs, |r| (r.started_at, r.id));
    Ok(Json(json!({ "runs": runs, "next": next })))
}
