use std::sync::Once;
use std::time::Duration;

use dhanman_devpeers::{Charge, IDEMPOTENCY_KEY, LogEntry, Received, Switches};
use serde_json::{Value, json};

/// A gateway serving on its own port, with a client for it.
pub struct TestGateway {
    pub base: String,
    pub http: reqwest::Client,
}

/// Starts a gateway in-process on a real socket (port 0) with these switches.
pub async fn spawn_gateway(switches: Switches) -> TestGateway {
    init_tracing();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(dhanman_devpeers::serve(listener, switches));
    TestGateway {
        base: format!("http://{addr}"),
        http: client(Duration::from_secs(10)),
    }
}

pub fn client(timeout: Duration) -> reqwest::Client {
    reqwest::Client::builder().timeout(timeout).build().unwrap()
}

/// A valid charge body.
pub fn charge_body(reference: &str, amount: &str) -> Value {
    json!({"amount": amount, "currency": "INR", "reference": reference, "method": "upi"})
}

impl TestGateway {
    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// `POST /v1/charges` through `client`, with the key if given.
    pub async fn charge_with(
        &self,
        client: &reqwest::Client,
        key: Option<&str>,
        body: &Value,
    ) -> reqwest::Result<reqwest::Response> {
        let mut request = client.post(self.url("/v1/charges")).json(body);
        if let Some(key) = key {
            request = request.header(IDEMPOTENCY_KEY, key);
        }
        request.send().await
    }

    pub async fn charge(&self, key: &str, body: &Value) -> reqwest::Response {
        self.charge_with(&self.http, Some(key), body).await.unwrap()
    }

    pub async fn refund(&self, key: &str, charge_id: &str, body: &Value) -> reqwest::Response {
        self.http
            .post(self.url(&format!("/v1/charges/{charge_id}/refunds")))
            .header(IDEMPOTENCY_KEY, key)
            .json(body)
            .send()
            .await
            .unwrap()
    }

    /// `PUT /_control`; returns the switches as they are afterwards.
    pub async fn control(&self, patch: Value) -> Switches {
        let response = self
            .http
            .put(self.url("/_control"))
            .json(&patch)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200, "PUT /_control {patch}");
        response.json().await.unwrap()
    }

    pub async fn log(&self) -> Vec<LogEntry> {
        let body: Value = self.get_json("/v1/log").await;
        serde_json::from_value(body["entries"].clone()).unwrap()
    }

    /// `GET /_requests`: every `/v1` request received.
    pub async fn requests(&self) -> Vec<Received> {
        let body: Value = self.get_json("/_requests").await;
        serde_json::from_value(body["requests"].clone()).unwrap()
    }

    /// `GET /v1/charges?idempotency_key=`: the charge the key made, if any (keys of
    /// letters, digits and dashes only).
    pub async fn charges_by_key(&self, key: &str) -> Vec<Charge> {
        let body = self
            .get_json(&format!("/v1/charges?idempotency_key={key}"))
            .await;
        serde_json::from_value(body["charges"].clone()).unwrap()
    }

    pub async fn get_json(&self, path: &str) -> Value {
        let response = self.http.get(self.url(path)).send().await.unwrap();
        assert!(
            response.status().is_success(),
            "GET {path}: {}",
            response.status()
        );
        response.json().await.unwrap()
    }
}

/// Silent unless `TEST_LOG` is set.
fn init_tracing() {
    static INIT: Once = Once::new();
    INIT.call_once(|| {
        if std::env::var_os("TEST_LOG").is_some() {
            tracing_subscriber::fmt()
                .with_env_filter("info")
                .with_test_writer()
                .init();
        }
    });
}
