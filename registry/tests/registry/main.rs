//! Integration tests against a real Postgres (`DATABASE_URL`), each in a fresh database with
//! the workspace migrations applied.

// Test code: a failed unwrap is a failed test, and what it prints is for the reader.
#![allow(clippy::unwrap_used, clippy::print_stdout, clippy::print_stderr)]

mod api;
mod auth;
mod client;
mod compatibility;
mod conformance;
mod dedup;
mod modes;
mod registry;
mod server;

use axum::Router;
use axum::body::Body;
use axum::http::{Method, Request, StatusCode, header};
use serde_json::Value;
use tower::ServiceExt;

pub const CONTENT_TYPE_V1: &str = "application/vnd.schemaregistry.v1+json";

/// The registry's router as a registry user calls it: every request carries the basic auth
/// of a user made for the test (writes need one; reads ignore it). `auth.rs` tests the
/// router without it.
pub async fn authorized_router(pool: sqlx::PgPool) -> Router {
    use base64::Engine;
    let user_info = dhanman_registry::users::add(&pool, "tests").await.unwrap();
    let header = format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(user_info)
    );
    dhanman_registry::router(pool).layer(axum::middleware::from_fn(
        move |mut request: axum::extract::Request, next: axum::middleware::Next| {
            let header = header.clone();
            async move {
                request
                    .headers_mut()
                    .insert(header::AUTHORIZATION, header.parse().unwrap());
                next.run(request).await
            }
        },
    ))
}

pub fn user_schema() -> String {
    r#"{"type":"record","name":"User","namespace":"dhanman.test","fields":[{"name":"id","type":"long"},{"name":"name","type":"string"}]}"#.to_owned()
}

/// `user_schema` with other whitespace and attribute order: the same schema.
pub fn user_schema_reformatted() -> String {
    r#"{
        "namespace": "dhanman.test",
        "type": "record",
        "name": "User",
        "fields": [
            {"type": "long", "name": "id"},
            {"name": "name", "type": "string"}
        ]
    }"#
    .to_owned()
}

/// `user_schema` with docs: another schema, unless registered with `normalize=true`.
pub fn user_schema_documented() -> String {
    r#"{"type":"record","name":"User","namespace":"dhanman.test","doc":"a user","fields":[{"name":"id","type":"long","doc":"the key"},{"name":"name","type":"string"}]}"#.to_owned()
}

/// `user_schema` with `name` turned into an int: incompatible in every direction.
pub fn user_schema_broken() -> String {
    r#"{"type":"record","name":"User","namespace":"dhanman.test","fields":[{"name":"id","type":"long"},{"name":"name","type":"int"}]}"#.to_owned()
}

pub fn user_schema_v2() -> String {
    r#"{"type":"record","name":"User","namespace":"dhanman.test","fields":[{"name":"id","type":"long"},{"name":"name","type":"string"},{"name":"email","type":["null","string"],"default":null}]}"#.to_owned()
}

/// Sends one request through the router and returns the status and the JSON body, checking
/// that every response carries the Confluent media type.
pub async fn call(
    app: &Router,
    method: Method,
    uri: &str,
    body: Option<Value>,
) -> (StatusCode, Value) {
    let request = Request::builder()
        .method(method)
        .uri(uri)
        .header(header::CONTENT_TYPE, CONTENT_TYPE_V1);
    let request = match body {
        Some(body) => request.body(Body::from(body.to_string())),
        None => request.body(Body::empty()),
    }
    .unwrap();
    call_raw(app, request).await
}

pub async fn call_raw(app: &Router, request: Request<Body>) -> (StatusCode, Value) {
    let response = app.clone().oneshot(request).await.unwrap();
    let status = response.status();
    assert_eq!(
        response.headers().get(header::CONTENT_TYPE).unwrap(),
        CONTENT_TYPE_V1,
        "content type of a {status} response"
    );
    let bytes = axum::body::to_bytes(response.into_body(), usize::MAX)
        .await
        .unwrap();
    let json = serde_json::from_slice(&bytes)
        .unwrap_or_else(|e| panic!("non-JSON body ({e}): {}", String::from_utf8_lossy(&bytes)));
    (status, json)
}

pub async fn register(app: &Router, subject: &str, schema: &str) -> (StatusCode, Value) {
    call(
        app,
        Method::POST,
        &format!("/subjects/{subject}/versions"),
        Some(serde_json::json!({ "schema": schema })),
    )
    .await
}

pub async fn get(app: &Router, uri: &str) -> (StatusCode, Value) {
    call(app, Method::GET, uri, None).await
}

/// Asserts a Confluent error response and returns its message.
#[track_caller]
pub fn assert_error(response: &(StatusCode, Value), status: StatusCode, error_code: i64) -> String {
    assert_eq!(response.0, status, "body: {}", response.1);
    assert_eq!(response.1["error_code"], error_code, "body: {}", response.1);
    response.1["message"].as_str().unwrap().to_owned()
}
