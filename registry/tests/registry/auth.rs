//! Who may change the registry: every write (register, delete, config, mode, import) needs
//! HTTP basic auth as an active registry user and is refused with 401 (error code 40101,
//! `WWW-Authenticate: Basic`) otherwise, changing nothing; reads stay open. An imported id
//! must leave the id sequence room to grow.

use axum::Router;
use axum::body::Body;
use axum::http::{Method, Request, StatusCode, header};
use base64::Engine;
use serde_json::{Value, json};
use sqlx::PgPool;

use crate::{CONTENT_TYPE_V1, assert_error, call_raw, user_schema, user_schema_v2};

fn request(
    method: Method,
    uri: &str,
    body: Option<Value>,
    user_info: Option<&str>,
) -> Request<Body> {
    let mut request = Request::builder()
        .method(method)
        .uri(uri)
        .header(header::CONTENT_TYPE, CONTENT_TYPE_V1);
    if let Some(user_info) = user_info {
        let encoded = base64::engine::general_purpose::STANDARD.encode(user_info);
        request = request.header(header::AUTHORIZATION, format!("Basic {encoded}"));
    }
    request
        .body(body.map_or_else(Body::empty, |b| Body::from(b.to_string())))
        .unwrap()
}

async fn send(
    app: &Router,
    method: Method,
    uri: &str,
    body: Option<Value>,
    user_info: Option<&str>,
) -> (StatusCode, Value) {
    call_raw(app, request(method, uri, body, user_info)).await
}

/// Every write the registry has, as (method, path, body).
fn writes() -> Vec<(Method, &'static str, Option<Value>)> {
    vec![
        (
            Method::POST,
            "/subjects/users-value/versions",
            Some(json!({ "schema": user_schema_v2() })),
        ),
        (Method::DELETE, "/subjects/users-value", None),
        (Method::DELETE, "/subjects/users-value/versions/1", None),
        (
            Method::PUT,
            "/config",
            Some(json!({ "compatibility": "NONE" })),
        ),
        (Method::DELETE, "/config", None),
        (
            Method::PUT,
            "/config/users-value",
            Some(json!({ "compatibility": "NONE" })),
        ),
        (Method::DELETE, "/config/users-value", None),
        (Method::PUT, "/mode", Some(json!({ "mode": "READONLY" }))),
        (
            Method::PUT,
            "/mode/users-value",
            Some(json!({ "mode": "IMPORT" })),
        ),
        (Method::DELETE, "/mode/users-value", None),
    ]
}

#[sqlx::test(migrations = "../migrations")]
async fn writes_need_an_active_registry_user_and_reads_do_not(pool: PgPool) {
    let user_info = dhanman_registry::users::add(&pool, "relay").await.unwrap();
    let app = dhanman_registry::router(pool.clone());
    let registered = send(
        &app,
        Method::POST,
        "/subjects/users-value/versions",
        Some(json!({ "schema": user_schema() })),
        Some(&user_info),
    )
    .await;
    assert_eq!(registered, (StatusCode::OK, json!({ "id": 1 })));

    let (name, _) = user_info.split_once(':').unwrap();
    let wrong = format!("{name}:dhr_not-the-secret");
    for credentials in [
        None,
        Some(wrong.as_str()),
        Some("nobody:x"),
        Some("garbage"),
        // A name no user can have, nor Postgres's text hold.
        Some("no\0body:x"),
    ] {
        for (method, uri, body) in writes() {
            let response = app
                .clone()
                .oneshot_raw(request(method.clone(), uri, body, credentials))
                .await;
            assert_eq!(response.0, StatusCode::UNAUTHORIZED, "{method} {uri}");
            assert_eq!(
                response.2.as_deref(),
                Some("Basic realm=\"schema-registry\""),
                "{method} {uri}"
            );
            assert_eq!(response.1["error_code"], 40101, "{method} {uri}");
        }
    }
    // Nothing changed: the version, the global mode and level are as they were.
    assert_eq!(
        send(
            &app,
            Method::GET,
            "/subjects/users-value/versions",
            None,
            None
        )
        .await,
        (StatusCode::OK, json!([1]))
    );
    assert_eq!(
        send(&app, Method::GET, "/mode", None, None).await.1,
        json!({ "mode": "READWRITE" })
    );
    assert_eq!(
        send(&app, Method::GET, "/config", None, None).await.1,
        json!({ "compatibilityLevel": "BACKWARD" })
    );
    // Reads, look-ups and compatibility checks need no credentials.
    assert_eq!(
        send(
            &app,
            Method::POST,
            "/subjects/users-value",
            Some(json!({ "schema": user_schema() })),
            None
        )
        .await
        .0,
        StatusCode::OK
    );
    assert_eq!(
        send(
            &app,
            Method::POST,
            "/compatibility/subjects/users-value/versions/latest",
            Some(json!({ "schema": user_schema_v2() })),
            None
        )
        .await,
        (StatusCode::OK, json!({ "is_compatible": true }))
    );
    // A revoked user's writes are refused too.
    assert!(dhanman_registry::users::revoke(&pool, name).await.unwrap());
    let revoked = send(
        &app,
        Method::PUT,
        "/mode",
        Some(json!({ "mode": "READONLY" })),
        Some(&user_info),
    )
    .await;
    assert_error(&revoked, StatusCode::UNAUTHORIZED, 40101);
}

#[sqlx::test(migrations = "../migrations")]
async fn an_import_cannot_take_an_id_near_the_end_of_the_id_space(pool: PgPool) {
    let user_info = dhanman_registry::users::add(&pool, "importer")
        .await
        .unwrap();
    let app = dhanman_registry::router(pool);
    let as_user = |method: Method, uri: &'static str, body: Value| {
        let (app, user_info) = (app.clone(), user_info.clone());
        async move { send(&app, method, uri, Some(body), Some(&user_info)).await }
    };
    assert_eq!(
        as_user(Method::PUT, "/mode", json!({ "mode": "IMPORT" }))
            .await
            .0,
        StatusCode::OK
    );
    for id in [i64::from(i32::MAX), (1 << 30) + 1] {
        let refused = as_user(
            Method::POST,
            "/subjects/imported-value/versions",
            json!({ "schema": user_schema(), "id": id }),
        )
        .await;
        let message = assert_error(&refused, StatusCode::UNPROCESSABLE_ENTITY, 422);
        assert!(message.contains("between 1 and 1073741824"), "{message}");
    }
    assert_eq!(
        as_user(
            Method::POST,
            "/subjects/imported-value/versions",
            json!({ "schema": user_schema(), "id": 1 << 30 }),
        )
        .await,
        (StatusCode::OK, json!({ "id": 1 << 30 }))
    );
    // The sequence goes on after the highest imported id, far from its end.
    as_user(Method::PUT, "/mode", json!({ "mode": "READWRITE" })).await;
    let next = as_user(
        Method::POST,
        "/subjects/other-value/versions",
        json!({ "schema": user_schema_v2() }),
    )
    .await;
    assert_eq!(next, (StatusCode::OK, json!({ "id": (1 << 30) + 1 })));
}

/// The router's answer with the `WWW-Authenticate` header, for the 401 checks.
trait OneshotRaw {
    async fn oneshot_raw(self, request: Request<Body>) -> (StatusCode, Value, Option<String>);
}

impl OneshotRaw for Router {
    async fn oneshot_raw(self, request: Request<Body>) -> (StatusCode, Value, Option<String>) {
        use tower::ServiceExt;
        let response = self.oneshot(request).await.unwrap();
        let status = response.status();
        let challenge = response
            .headers()
            .get(header::WWW_AUTHENTICATE)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        let bytes = axum::body::to_bytes(response.into_body(), usize::MAX)
            .await
            .unwrap();
        (status, serde_json::from_slice(&bytes).unwrap(), challenge)
    }
}
