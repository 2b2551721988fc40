//! The HTTP client of the payment gateway (the contract is in `devpeers/src/lib.rs`).
//!
//! Every attempt has a timeout and goes through the circuit breaker. Transient failures
//! (unreachable, timed out, 5xx, 408/429, the connection closed before an answer) are
//! retried with exponential backoff and jitter (`backon`); every other answer is final for
//! this call, never retried. Every attempt of one charge carries the same
//! `Idempotency-Key`, so a retry after a lost response replays the charge instead of
//! making a second one.
//!
//! What an answer proves: 2xx, and a decline (402), say what the gateway did. Only 400
//! and 422 prove that nothing moved (the gateway could not accept the request:
//! [`GatewayError::Rejected`]). Any other answer — 409 (the key is in use, or the request
//! conflicts with what the gateway already did), 404, 425, anything unexpected — is
//! [`GatewayError::Ambiguous`]: money may have moved, and only [`GatewayClient::lookup`]
//! (what the key did) can tell.

use std::sync::Arc;
use std::time::{Duration, Instant};

use backon::{ExponentialBuilder, Retryable};
use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::breaker::{Breaker, BreakerState};
use crate::metric;

/// How the client reaches the gateway and how hard it tries.
#[derive(Debug, Clone)]
pub struct GatewaySettings {
    /// Base URL, e.g. `http://127.0.0.1:8090`.
    pub url: String,
    /// Limit of one attempt, connect to last byte.
    pub timeout: Duration,
    /// Retries after the first attempt, for transient failures only.
    pub retries: usize,
    /// Delay before the first retry; doubles each time (with jitter), capped at 16 times.
    pub backoff: Duration,
    /// Consecutive transient failures that open the breaker.
    pub breaker_threshold: u32,
    /// How long the breaker stays open before it lets a trial call through.
    pub breaker_cool_down: Duration,
}

impl Default for GatewaySettings {
    fn default() -> Self {
        GatewaySettings {
            url: "http://127.0.0.1:8090".into(),
            timeout: Duration::from_secs(5),
            retries: 3,
            backoff: Duration::from_millis(200),
            breaker_threshold: 5,
            breaker_cool_down: Duration::from_secs(30),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Method {
    Upi,
    Card,
    Netbanking,
}

impl Method {
    pub fn as_str(self) -> &'static str {
        match self {
            Method::Upi => "upi",
            Method::Card => "card",
            Method::Netbanking => "netbanking",
        }
    }

    pub fn parse(raw: &str) -> Option<Method> {
        match raw {
            "upi" => Some(Method::Upi),
            "card" => Some(Method::Card),
            "netbanking" => Some(Method::Netbanking),
            _ => None,
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct ChargeRequest<'a> {
    pub amount: Decimal,
    pub currency: &'a str,
    pub reference: &'a str,
    pub method: Method,
}

/// What the gateway decided about a charge.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ChargeOutcome {
    Charged {
        charge_id: String,
    },
    /// Final: the same request gets the same answer.
    Declined {
        charge_id: String,
        reason: String,
    },
}

#[derive(Debug, thiserror::Error)]
pub enum GatewayError {
    /// Transient, and still failing after every retry. Whether money moved is unknown (a
    /// timeout or a lost response may follow a charge).
    #[error("payment gateway unavailable: {0}")]
    Unavailable(String),
    /// The breaker is open: nothing was sent.
    #[error("payment gateway circuit breaker is open; retry in {0:?}")]
    BreakerOpen(Duration),
    /// 400 or 422 (or a 402 to a refund): the gateway could not accept the request and
    /// moved no money. Final.
    #[error("payment gateway refused the request with {status}: {body}")]
    Rejected { status: u16, body: String },
    /// An answer that does not prove whether money moved: 409, 404, 425, any other 4xx
    /// or unexpected status. Not retried; reconcile with [`GatewayClient::lookup`].
    #[error("payment gateway answered {status}, which does not say whether money moved: {body}")]
    Ambiguous { status: u16, body: String },
    /// A success whose body is not what the contract says.
    #[error("payment gateway answered {status} with an unreadable body: {detail}")]
    Protocol { status: u16, detail: String },
}

impl GatewayError {
    fn is_transient(&self) -> bool {
        matches!(self, GatewayError::Unavailable(_))
    }
}

#[derive(Deserialize)]
struct ChargeBody {
    charge_id: String,
    #[serde(default)]
    error: Option<String>,
}

#[derive(Deserialize)]
struct RefundBody {
    refund_id: String,
}

#[derive(Deserialize)]
struct LookupBody {
    charges: Vec<LookedUp>,
}

#[derive(Deserialize)]
struct LookedUp {
    charge_id: String,
    status: String,
    #[serde(default)]
    error: Option<String>,
}

/// Whether an answer proves that the gateway moved no money: it could not accept the
/// request (malformed, or a field it refuses).
fn proves_nothing_moved(status: u16) -> bool {
    matches!(status, 400 | 422)
}

/// Clones share the connection pool and the breaker.
#[derive(Clone)]
pub struct GatewayClient {
    http: reqwest::Client,
    base: String,
    settings: GatewaySettings,
    breaker: Arc<Breaker>,
}

impl GatewayClient {
    pub fn new(settings: GatewaySettings) -> Result<Self, reqwest::Error> {
        let http = reqwest::Client::builder()
            .timeout(settings.timeout)
            .connect_timeout(settings.timeout)
            .build()?;
        Ok(GatewayClient {
            http,
            base: settings.url.trim_end_matches('/').to_string(),
            breaker: Arc::new(Breaker::new(
                settings.breaker_threshold,
                settings.breaker_cool_down,
            )),
            settings,
        })
    }

    pub fn breaker_state(&self) -> BreakerState {
        self.breaker.state(Instant::now())
    }

    /// How long calls will fail fast, when the breaker is open now.
    pub fn open_for(&self) -> Option<Duration> {
        self.breaker.open_for(Instant::now())
    }

    /// The longest one call ([`charge`](Self::charge), [`refund`](Self::refund),
    /// [`lookup`](Self::lookup)) can take with all its retries: every attempt's timeout,
    /// plus every backoff delay at its largest (capped at 16 times the first, and jitter
    /// adds up to as much again). The payment saga's lease is derived from it.
    pub fn call_budget(&self) -> Duration {
        let s = &self.settings;
        let attempts = u32::try_from(s.retries.saturating_add(1)).unwrap_or(u32::MAX);
        let mut total = s.timeout.saturating_mul(attempts);
        let cap = s.backoff.saturating_mul(16);
        let mut delay = s.backoff;
        for _ in 0..s.retries.min(64) {
            total = total.saturating_add(delay.min(cap).saturating_mul(2));
            delay = delay.saturating_mul(2);
        }
        if s.retries > 64 {
            let rest = u32::try_from(s.retries - 64).unwrap_or(u32::MAX);
            total = total.saturating_add(cap.saturating_mul(2).saturating_mul(rest));
        }
        total
    }

    #[tracing::instrument(skip_all, fields(idempotency_key = key, reference = request.reference))]
    pub async fn charge(
        &self,
        key: &str,
        request: &ChargeRequest<'_>,
    ) -> Result<ChargeOutcome, GatewayError> {
        let body = serde_json::to_value(request).map_err(|e| GatewayError::Protocol {
            status: 0,
            detail: format!("encoding the charge: {e}"),
        })?;
        let url = format!("{}/v1/charges", self.base);
        let (status, answer) = self.call("charge", &url, Some((key, &body))).await?;
        let parsed: ChargeBody =
            serde_json::from_value(answer).map_err(|e| GatewayError::Protocol {
                status,
                detail: e.to_string(),
            })?;
        Ok(match status {
            402 => ChargeOutcome::Declined {
                charge_id: parsed.charge_id,
                reason: parsed.error.unwrap_or_else(|| "declined".into()),
            },
            _ => ChargeOutcome::Charged {
                charge_id: parsed.charge_id,
            },
        })
    }

    /// Refunds the whole charge; returns the refund id.
    #[tracing::instrument(skip_all, fields(idempotency_key = key, charge_id))]
    pub async fn refund(&self, key: &str, charge_id: &str) -> Result<String, GatewayError> {
        let url = format!("{}/v1/charges/{charge_id}/refunds", self.base);
        let body = serde_json::json!({});
        let (status, answer) = self.call("refund", &url, Some((key, &body))).await?;
        if status == 402 {
            return Err(GatewayError::Rejected {
                status,
                body: answer.to_string(),
            });
        }
        let parsed: RefundBody =
            serde_json::from_value(answer).map_err(|e| GatewayError::Protocol {
                status,
                detail: e.to_string(),
            })?;
        Ok(parsed.refund_id)
    }

    /// What the gateway did under a charge's idempotency key (`GET
    /// /v1/charges?idempotency_key=`): the charge it made, declined or not, or `None`
    /// when the key made no charge (yet). How an ambiguous answer is reconciled.
    #[tracing::instrument(skip_all, fields(idempotency_key = key))]
    pub async fn lookup(&self, key: &str) -> Result<Option<ChargeOutcome>, GatewayError> {
        let mut url = reqwest::Url::parse(&format!("{}/v1/charges", self.base)).map_err(|e| {
            GatewayError::Protocol {
                status: 0,
                detail: format!("the gateway URL: {e}"),
            }
        })?;
        url.query_pairs_mut().append_pair("idempotency_key", key);
        let (status, answer) = self.call("lookup", url.as_str(), None).await?;
        let protocol = |detail: String| GatewayError::Protocol { status, detail };
        if status == 402 {
            return Err(protocol("a lookup answered 402".into()));
        }
        let parsed: LookupBody =
            serde_json::from_value(answer).map_err(|e| protocol(e.to_string()))?;
        let Some(found) = parsed.charges.into_iter().next() else {
            return Ok(None);
        };
        match found.status.as_str() {
            "succeeded" => Ok(Some(ChargeOutcome::Charged {
                charge_id: found.charge_id,
            })),
            "declined" => Ok(Some(ChargeOutcome::Declined {
                charge_id: found.charge_id,
                reason: found.error.unwrap_or_else(|| "declined".into()),
            })),
            other => Err(protocol(format!("a charge with status {other:?}"))),
        }
    }

    /// One call with retries: a POST of `body` under its key, or a GET without; answers a
    /// 2xx or a 402 with its JSON body.
    async fn call(
        &self,
        op: &'static str,
        url: &str,
        post: Option<(&str, &Value)>,
    ) -> Result<(u16, Value), GatewayError> {
        let backoff = ExponentialBuilder::default()
            .with_min_delay(self.settings.backoff)
            .with_max_delay(self.settings.backoff * 16)
            .with_max_times(self.settings.retries)
            .with_jitter();
        (|| self.attempt(op, url, post))
            .retry(backoff)
            .when(GatewayError::is_transient)
            .notify(|error, delay| {
                metrics::counter!(metric::RETRIES, "op" => op).increment(1);
                tracing::warn!(%error, ?delay, op, "payment gateway call failed; retrying");
            })
            .await
    }

    async fn attempt(
        &self,
        op: &'static str,
        url: &str,
        post: Option<(&str, &Value)>,
    ) -> Result<(u16, Value), GatewayError> {
        if let Err(wait) = self.breaker.acquire(Instant::now()) {
            count(op, "breaker_open");
            return Err(GatewayError::BreakerOpen(wait));
        }
        let mut guard = Abandoned(Some(&self.breaker));
        let started = Instant::now();
        let result = self.exchange(url, post).await;
        metrics::histogram!(metric::REQUEST_DURATION, "op" => op)
            .record(started.elapsed().as_secs_f64());
        guard.0 = None;
        match result {
            Err(e) => {
                self.breaker.on_failure(Instant::now());
                let outcome = if e.is_timeout() { "timeout" } else { "network" };
                count(op, outcome);
                Err(GatewayError::Unavailable(format!("{outcome}: {e}")))
            }
            Ok((status, text)) if status >= 500 || status == 408 || status == 429 => {
                self.breaker.on_failure(Instant::now());
                count(op, "unavailable");
                Err(GatewayError::Unavailable(format!(
                    "answered {status}: {text}"
                )))
            }
            Ok((status, text)) => {
                self.breaker.on_success();
                match status {
                    200..=299 | 402 => {
                        count(op, if status == 402 { "declined" } else { "ok" });
                        let value =
                            serde_json::from_str(&text).map_err(|e| GatewayError::Protocol {
                                status,
                                detail: e.to_string(),
                            })?;
                        Ok((status, value))
                    }
                    _ if proves_nothing_moved(status) => {
                        count(op, "rejected");
                        Err(GatewayError::Rejected { status, body: text })
                    }
                    _ => {
                        count(op, "ambiguous");
                        Err(GatewayError::Ambiguous { status, body: text })
                    }
                }
            }
        }
    }

    /// One request and its whole body: a connection closed mid-answer is a transport error.
    async fn exchange(
        &self,
        url: &str,
        post: Option<(&str, &Value)>,
    ) -> Result<(u16, String), reqwest::Error> {
        let request = match post {
            Some((key, body)) => self
                .http
                .post(url)
                .header("Idempotency-Key", key)
                .json(body),
            None => self.http.get(url),
        };
        let response = request.send().await?;
        let status = response.status().as_u16();
        let text = response.text().await?;
        Ok((status, text))
    }
}

fn count(op: &'static str, outcome: &'static str) {
    metrics::counter!(metric::REQUESTS, "op" => op, "outcome" => outcome).increment(1);
}

/// Frees a half-open trial whose call was dropped before it had an outcome.
struct Abandoned<'a>(Option<&'a Breaker>);

impl Drop for Abandoned<'_> {
    fn drop(&mut self) {
        if let Some(breaker) = self.0 {
            breaker.on_abandoned();
        }
    }
}

#[cfg(test)]
mod tests {
    //! Against the development gateway served in-process on a real socket.

    use super::*;
    use dhanman_devpeers::Switches;
    use serde_json::json;

    async fn gateway(switches: Switches) -> String {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(dhanman_devpeers::serve(listener, switches));
        base
    }

    fn client(base: &str, retries: usize, threshold: u32) -> GatewayClient {
        GatewayClient::new(GatewaySettings {
            url: base.to_string(),
            timeout: Duration::from_millis(500),
            retries,
            backoff: Duration::from_millis(5),
            breaker_threshold: threshold,
            breaker_cool_down: Duration::from_millis(300),
        })
        .unwrap()
    }

    fn request(method: Method, reference: &str) -> ChargeRequest<'_> {
        ChargeRequest {
            amount: Decimal::new(150_050, 2),
            currency: "INR",
            reference,
            method,
        }
    }

    async fn log(base: &str) -> Vec<Value> {
        let body: Value = reqwest::get(format!("{base}/v1/log"))
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        body["entries"].as_array().unwrap().clone()
    }

    async fn control(base: &str, patch: Value) {
        let r = reqwest::Client::new()
            .put(format!("{base}/_control"))
            .json(&patch)
            .send()
            .await
            .unwrap();
        assert!(r.status().is_success());
    }

    #[tokio::test]
    async fn transient_failures_are_retried_under_one_key_and_charge_once() {
        let base = gateway(Switches {
            fail_next: 1,
            lose_next: 1,
            hang_next: 1,
            hang_ms: 5_000,
            ..Switches::default()
        })
        .await;
        let gateway = client(&base, 4, 10);
        // 503, then a hang past the timeout, then a lost response (charged), then the replay.
        let outcome = gateway
            .charge("k-1", &request(Method::Upi, "INV-1"))
            .await
            .unwrap();
        let ChargeOutcome::Charged { charge_id } = outcome else {
            panic!("{outcome:?}")
        };
        let log = log(&base).await;
        assert_eq!(log.len(), 1, "{log:?}");
        assert_eq!(log[0]["charge_id"], charge_id.as_str());
        assert_eq!(gateway.breaker_state(), BreakerState::Closed);
    }

    #[tokio::test]
    async fn a_decline_is_an_answer_not_retried() {
        let base = gateway(Switches::default()).await;
        let gateway = client(&base, 3, 1);
        let outcome = gateway
            .charge("k-2", &request(Method::Card, "please decline"))
            .await
            .unwrap();
        assert!(
            matches!(outcome, ChargeOutcome::Declined { .. }),
            "{outcome:?}"
        );
        assert_eq!(log(&base).await.len(), 1);
        assert_eq!(gateway.breaker_state(), BreakerState::Closed);
        // A refund of a charge the gateway does not know: a 404 proves nothing, so it is
        // ambiguous, not a final refusal.
        let err = gateway.refund("r-2", "nope").await.unwrap_err();
        assert!(
            matches!(err, GatewayError::Ambiguous { status: 404, .. }),
            "{err}"
        );
    }

    async fn posts(base: &str) -> usize {
        let body: Value = reqwest::get(format!("{base}/_requests"))
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        body["requests"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|r| r["method"] == "POST")
            .count()
    }

    /// A 409 does not prove that nothing moved: it is ambiguous, not retried and not a
    /// rejection; the lookup by key tells whether the gateway charged.
    #[tokio::test]
    async fn an_ambiguous_answer_is_not_retried_and_the_lookup_tells_what_happened() {
        let base = gateway(Switches {
            ambiguous_next: 1,
            busy_next: 1,
            ..Switches::default()
        })
        .await;
        let gateway = client(&base, 3, 1);
        let err = gateway
            .charge("k-4", &request(Method::Upi, "INV-4"))
            .await
            .unwrap_err();
        assert!(
            matches!(err, GatewayError::Ambiguous { status: 409, .. }),
            "{err}"
        );
        assert_eq!(posts(&base).await, 1, "not retried");
        let log = log(&base).await;
        let found = gateway.lookup("k-4").await.unwrap();
        assert_eq!(
            found,
            Some(ChargeOutcome::Charged {
                charge_id: log[0]["charge_id"].as_str().unwrap().to_string()
            })
        );
        // The same 409, nothing charged: the lookup finds nothing.
        let err = gateway
            .charge("k-5", &request(Method::Upi, "INV-5"))
            .await
            .unwrap_err();
        assert!(matches!(err, GatewayError::Ambiguous { status: 409, .. }));
        assert_eq!(gateway.lookup("k-5").await.unwrap(), None);
        let declined = gateway
            .charge("k-6", &request(Method::Card, "decline"))
            .await
            .unwrap();
        assert_eq!(gateway.lookup("k-6").await.unwrap(), Some(declined));
        // Answers are not transport failures: the breaker (threshold 1) stays closed.
        assert_eq!(gateway.breaker_state(), BreakerState::Closed);
    }

    /// Only 400 and 422 prove that nothing moved: those are rejections, final.
    #[tokio::test]
    async fn a_request_the_gateway_cannot_accept_is_rejected() {
        let base = gateway(Switches::default()).await;
        let gateway = client(&base, 3, 1);
        let mut bad = request(Method::Upi, "INV-7");
        bad.currency = "inr";
        let err = gateway.charge("k-7", &bad).await.unwrap_err();
        assert!(
            matches!(err, GatewayError::Rejected { status: 422, .. }),
            "{err}"
        );
        assert_eq!(posts(&base).await, 1, "not retried");
        assert!(log(&base).await.is_empty());
        assert!(proves_nothing_moved(400) && proves_nothing_moved(422));
        for status in [401, 403, 404, 405, 409, 410, 425, 451, 418] {
            assert!(!proves_nothing_moved(status), "{status}");
        }
    }

    #[test]
    fn the_call_budget_covers_every_attempt_and_the_longest_backoff() {
        let gateway = client("http://127.0.0.1:9", 3, 5);
        // 4 attempts of 500 ms, then backoffs of at most 2 × (5, 10, 20) ms.
        assert_eq!(gateway.call_budget(), Duration::from_millis(2_070));
        let capped = GatewayClient::new(GatewaySettings {
            retries: 6,
            backoff: Duration::from_millis(100),
            timeout: Duration::from_secs(1),
            ..GatewaySettings::default()
        })
        .unwrap();
        // 100, 200, 400, 800, 1600, 1600 (capped at 16 ×), each up to doubled by jitter.
        assert_eq!(capped.call_budget(), Duration::from_millis(7_000 + 9_400));
    }

    #[tokio::test]
    async fn a_down_gateway_opens_the_breaker_then_a_trial_closes_it() {
        let base = gateway(Switches {
            down: true,
            ..Switches::default()
        })
        .await;
        let gateway = client(&base, 1, 2);
        let err = gateway
            .charge("k-3", &request(Method::Upi, "INV-3"))
            .await
            .unwrap_err();
        assert!(matches!(err, GatewayError::Unavailable(_)), "{err}");
        assert_eq!(gateway.breaker_state(), BreakerState::Open);
        let err = gateway
            .charge("k-3", &request(Method::Upi, "INV-3"))
            .await
            .unwrap_err();
        assert!(matches!(err, GatewayError::BreakerOpen(_)), "{err}");
        assert!(gateway.open_for().is_some());

        control(&base, json!({"down": false})).await;
        let deadline = Instant::now() + Duration::from_secs(5);
        let charged = loop {
            match gateway.charge("k-3", &request(Method::Upi, "INV-3")).await {
                Ok(outcome) => break outcome,
                Err(GatewayError::BreakerOpen(wait)) if Instant::now() < deadline => {
                    tokio::time::sleep(wait).await
                }
                Err(e) => panic!("{e}"),
            }
        };
        assert!(matches!(charged, ChargeOutcome::Charged { .. }));
        assert_eq!(gateway.breaker_state(), BreakerState::Closed);
        let charge_id = match charged {
            ChargeOutcome::Charged { charge_id } => charge_id,
            other => panic!("{other:?}"),
        };
        // Refunds replay under their key too.
        let first = gateway.refund("r-3", &charge_id).await.unwrap();
        assert_eq!(gateway.refund("r-3", &charge_id).await.unwrap(), first);
        assert_eq!(log(&base).await.len(), 2);
    }
}
