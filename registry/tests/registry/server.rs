//! The registry served over a real socket, nested at `/schema-registry` as the API mounts it,
//! with a minimal HTTP/1.1 client so that tests see exactly the bytes a Confluent client would.

use axum::Router;
use axum::http::StatusCode;
use serde_json::Value;
use sqlx::PgPool;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use crate::CONTENT_TYPE_V1;

pub struct TestApp {
    addr: std::net::SocketAddr,
}

/// A raw response: status, headers (names lowercased) and body.
pub struct RawResponse {
    pub status: StatusCode,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl RawResponse {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(key, _)| key == name)
            .map(|(_, value)| value.as_str())
    }

    /// Status and JSON body, checking that the response carries the Confluent media type.
    pub fn json(&self) -> (StatusCode, Value) {
        assert_eq!(
            self.header("content-type"),
            Some(CONTENT_TYPE_V1),
            "content type of a {} response",
            self.status
        );
        let json = serde_json::from_slice(&self.body).unwrap_or_else(|e| {
            panic!(
                "non-JSON body ({e}): {}",
                String::from_utf8_lossy(&self.body)
            )
        });
        (self.status, json)
    }
}

pub async fn spawn_app(pool: PgPool) -> TestApp {
    let app = Router::new().nest("/schema-registry", crate::authorized_router(pool).await);
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    TestApp { addr }
}

impl TestApp {
    /// Sends one request (its own connection, closed after the response).
    pub async fn send(
        &self,
        method: &str,
        path: &str,
        content_type: Option<&str>,
        body: &[u8],
    ) -> RawResponse {
        let mut stream = TcpStream::connect(self.addr).await.unwrap();
        let mut head = format!(
            "{method} /schema-registry{path} HTTP/1.1\r\nHost: {}\r\nConnection: close\r\nAccept: {CONTENT_TYPE_V1}\r\nContent-Length: {}\r\n",
            self.addr,
            body.len()
        );
        if let Some(content_type) = content_type {
            head.push_str(&format!("Content-Type: {content_type}\r\n"));
        }
        head.push_str("\r\n");
        stream.write_all(head.as_bytes()).await.unwrap();
        stream.write_all(body).await.unwrap();
        let mut raw = Vec::new();
        stream.read_to_end(&mut raw).await.unwrap();
        parse_response(&raw)
    }

    pub async fn call(&self, method: &str, path: &str, body: Option<Value>) -> (StatusCode, Value) {
        let body = body.map(|body| body.to_string()).unwrap_or_default();
        self.send(method, path, Some(CONTENT_TYPE_V1), body.as_bytes())
            .await
            .json()
    }

    pub async fn get(&self, path: &str) -> (StatusCode, Value) {
        self.call("GET", path, None).await
    }

    pub async fn delete(&self, path: &str) -> (StatusCode, Value) {
        self.call("DELETE", path, None).await
    }

    pub async fn post(&self, path: &str, body: Value) -> (StatusCode, Value) {
        self.call("POST", path, Some(body)).await
    }

    pub async fn put(&self, path: &str, body: Value) -> (StatusCode, Value) {
        self.call("PUT", path, Some(body)).await
    }

    /// `POST /subjects/{subject}/versions` with just the schema.
    pub async fn register(&self, subject: &str, schema: &str) -> (StatusCode, Value) {
        self.post(
            &format!("/subjects/{subject}/versions"),
            serde_json::json!({ "schema": schema }),
        )
        .await
    }

    /// Registers and returns the id, failing the test on anything but 200.
    pub async fn register_ok(&self, subject: &str, schema: &str) -> i64 {
        let (status, body) = self.register(subject, schema).await;
        assert_eq!(status, StatusCode::OK, "registering in {subject}: {body}");
        body["id"].as_i64().unwrap()
    }

    pub async fn put_mode(&self, path: &str, mode: &str) -> (StatusCode, Value) {
        self.put(path, serde_json::json!({ "mode": mode })).await
    }

    pub async fn put_config(&self, path: &str, level: &str) -> (StatusCode, Value) {
        self.put(path, serde_json::json!({ "compatibility": level }))
            .await
    }
}

fn parse_response(raw: &[u8]) -> RawResponse {
    let split = raw
        .windows(4)
        .position(|window| window == b"\r\n\r\n")
        .unwrap_or_else(|| panic!("no header end in {}", String::from_utf8_lossy(raw)));
    let head = std::str::from_utf8(&raw[..split]).unwrap();
    let mut lines = head.split("\r\n");
    let status: u16 = lines
        .next()
        .unwrap()
        .split(' ')
        .nth(1)
        .unwrap()
        .parse()
        .unwrap();
    let headers: Vec<(String, String)> = lines
        .map(|line| {
            let (name, value) = line.split_once(':').unwrap();
            (name.trim().to_ascii_lowercase(), value.trim().to_owned())
        })
        .collect();
    let mut body = raw[split + 4..].to_vec();
    let chunked = headers
        .iter()
        .any(|(name, value)| name == "transfer-encoding" && value.contains("chunked"));
    if chunked {
        body = dechunk(&body);
    }
    RawResponse {
        status: StatusCode::from_u16(status).unwrap(),
        headers,
        body,
    }
}

fn dechunk(mut raw: &[u8]) -> Vec<u8> {
    let mut body = Vec::new();
    loop {
        let line_end = raw.windows(2).position(|w| w == b"\r\n").unwrap();
        let size_text = std::str::from_utf8(&raw[..line_end]).unwrap();
        let size = usize::from_str_radix(size_text.split(';').next().unwrap().trim(), 16).unwrap();
        raw = &raw[line_end + 2..];
        if size == 0 {
            return body;
        }
        body.extend_from_slice(&raw[..size]);
        raw = &raw[size + 2..];
    }
}
