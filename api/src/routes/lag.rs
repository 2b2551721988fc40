//! `GET /v1/lag`: the pipeline's consumer lag as the API process last sampled it, with each
//! group's and partition's status judged over the samples' window. The
//! groups are the pipeline's, not an organization's: an administrator's key reads them.

use axum::Json;
use axum::extract::State;
use dhanman_connectors::lag::{self, LagReport};
use serde::Deserialize;

use crate::extract::{Auth, Params};
use crate::{ApiError, AppState};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LagQuery {
    pub group: Option<String>,
}

pub async fn lag(
    State(state): State<AppState>,
    Auth(caller): Auth,
    Params(q): Params<LagQuery>,
) -> Result<Json<LagReport>, ApiError> {
    caller.require(&["admin"], "reading the pipeline's lag")?;
    let report = lag::latest(&state.pool, q.group.as_deref(), &state.lag_rules)
        .await
        .map_err(ApiError::internal)?;
    Ok(Json(report))
}
