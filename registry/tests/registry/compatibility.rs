//! `POST /compatibility/...` and the verdicts registration enforces.
//!
//! Tests named `*_verdict` need a real `compatibility::incompatibilities`: against an engine that
//! calls everything compatible they fail, by design. The others hold either way.

use axum::http::StatusCode;
use serde_json::json;
use sqlx::PgPool;

use crate::server::spawn_app;
use crate::{assert_error, user_schema, user_schema_broken, user_schema_v2};

/// v1 of a subject whose v2 added a field without a default, which only NONE lets in.
const ACCOUNT_V1: &str =
    r#"{"type":"record","name":"Account","fields":[{"name":"id","type":"long"}]}"#;
const ACCOUNT_V2: &str = r#"{"type":"record","name":"Account","fields":[{"name":"id","type":"long"},{"name":"code","type":"string"}]}"#;

#[sqlx::test(migrations = "../migrations")]
async fn compatibility_endpoints_answer_and_fail_like_confluent(pool: PgPool) {
    let app = spawn_app(pool).await;
    let v2 = json!({ "schema": user_schema_v2() });

    let message = assert_error(
        &app.post("/compatibility/subjects/nobody/versions/latest", v2.clone())
            .await,
        StatusCode::NOT_FOUND,
        40401,
    );
    assert_eq!(message, "Subject 'nobody' not found.");
    assert_error(
        &app.post("/compatibility/subjects/nobody/versions/1", v2.clone())
            .await,
        StatusCode::NOT_FOUND,
        40401,
    );
    // Against all versions of a subject that has none: anything goes.
    assert_eq!(
        app.post("/compatibility/subjects/nobody/versions", v2.clone())
            .await,
        (StatusCode::OK, json!({ "is_compatible": true }))
    );

    app.register_ok("users-value", &user_schema()).await;
    for path in [
        "/compatibility/subjects/users-value/versions/1",
        "/compatibility/subjects/users-value/versions/latest",
        "/compatibility/subjects/users-value/versions/-1",
        "/compatibility/subjects/users-value/versions",
    ] {
        assert_eq!(
            app.post(path, v2.clone()).await,
            (StatusCode::OK, json!({ "is_compatible": true })),
            "{path}"
        );
        assert_eq!(
            app.post(&format!("{path}?verbose=true"), v2.clone()).await,
            (
                StatusCode::OK,
                json!({ "is_compatible": true, "messages": [] })
            ),
            "{path}"
        );
    }

    assert_error(
        &app.post("/compatibility/subjects/users-value/versions/2", v2.clone())
            .await,
        StatusCode::NOT_FOUND,
        40402,
    );
    for invalid in ["0", "abc"] {
        assert_error(
            &app.post(
                &format!("/compatibility/subjects/users-value/versions/{invalid}"),
                v2.clone(),
            )
            .await,
            StatusCode::UNPROCESSABLE_ENTITY,
            42202,
        );
    }
    for body in [
        json!({ "schema": "{\"type\":\"record\"}" }),
        json!({ "schema": "" }),
        json!({ "schema": "message M {}", "schemaType": "PROTOBUF" }),
        json!({ "schema": user_schema_v2(), "references": [{ "name": "x", "subject": "y", "version": 1 }] }),
    ] {
        for path in [
            "/compatibility/subjects/users-value/versions/latest",
            "/compatibility/subjects/users-value/versions",
        ] {
            assert_error(
                &app.post(path, body.clone()).await,
                StatusCode::UNPROCESSABLE_ENTITY,
                42201,
            );
        }
    }

    // A soft-deleted version can't be checked against.
    app.register_ok("users-value", &user_schema_v2()).await;
    app.delete("/subjects/users-value/versions/1").await;
    assert_error(
        &app.post("/compatibility/subjects/users-value/versions/1", v2.clone())
            .await,
        StatusCode::NOT_FOUND,
        40402,
    );
}

#[sqlx::test(migrations = "../migrations")]
async fn import_mode_skips_the_compatibility_check(pool: PgPool) {
    let app = spawn_app(pool).await;
    app.put_mode("/mode/users-value", "IMPORT").await;
    for (id, schema) in [(1, user_schema()), (2, user_schema_broken())] {
        assert_eq!(
            app.post(
                "/subjects/users-value/versions",
                json!({ "schema": schema, "id": id })
            )
            .await,
            (StatusCode::OK, json!({ "id": id }))
        );
    }
}

#[sqlx::test(migrations = "../migrations")]
async fn incompatible_registration_is_refused_verdict(pool: PgPool) {
    let app = spawn_app(pool).await;
    app.register_ok("users-value", &user_schema()).await;

    let message = assert_error(
        &app.register("users-value", &user_schema_broken()).await,
        StatusCode::CONFLICT,
        409,
    );
    assert!(
        message.starts_with("Schema being registered is incompatible with an earlier schema"),
        "{message}"
    );
    assert_eq!(
        app.get("/subjects/users-value/versions").await.1,
        json!([1])
    );

    // A new field without a default can't read old data: BACKWARD refuses it, NONE lets it in.
    app.register_ok("accounts-value", ACCOUNT_V1).await;
    assert_error(
        &app.register("accounts-value", ACCOUNT_V2).await,
        StatusCode::CONFLICT,
        409,
    );
    app.put_config("/config/accounts-value", "NONE").await;
    app.register_ok("accounts-value", ACCOUNT_V2).await;
}

#[sqlx::test(migrations = "../migrations")]
async fn compatibility_check_reports_incompatibility_verdict(pool: PgPool) {
    let app = spawn_app(pool).await;
    app.register_ok("users-value", &user_schema()).await;
    let broken = json!({ "schema": user_schema_broken() });

    for path in [
        "/compatibility/subjects/users-value/versions/latest",
        "/compatibility/subjects/users-value/versions",
    ] {
        assert_eq!(
            app.post(path, broken.clone()).await,
            (StatusCode::OK, json!({ "is_compatible": false })),
            "{path}"
        );
        let (status, body) = app
            .post(&format!("{path}?verbose=true"), broken.clone())
            .await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(body["is_compatible"], false);
        let messages = body["messages"].as_array().unwrap();
        assert!(!messages.is_empty(), "{body}");
        assert!(messages.iter().all(serde_json::Value::is_string), "{body}");
    }
}

/// v1 {id}, v2 {id, code} (let in under NONE), then BACKWARD_TRANSITIVE: a candidate equal to
/// v2 reads v2's data but not v1's.
#[sqlx::test(migrations = "../migrations")]
async fn one_version_check_ignores_transitivity_verdict(pool: PgPool) {
    let app = spawn_app(pool).await;
    app.put_config("/config/accounts-value", "NONE").await;
    app.register_ok("accounts-value", ACCOUNT_V1).await;
    app.register_ok("accounts-value", ACCOUNT_V2).await;
    app.put_config("/config/accounts-value", "BACKWARD_TRANSITIVE")
        .await;
    let candidate = json!({ "schema": ACCOUNT_V2 });

    let verdict = |path: &'static str| {
        let app = &app;
        let candidate = candidate.clone();
        async move {
            let (status, body) = app.post(path, candidate).await;
            assert_eq!(status, StatusCode::OK, "{path}: {body}");
            body["is_compatible"].as_bool().unwrap()
        }
    };
    assert!(verdict("/compatibility/subjects/accounts-value/versions/latest").await);
    assert!(verdict("/compatibility/subjects/accounts-value/versions/2").await);
    assert!(!verdict("/compatibility/subjects/accounts-value/versions/1").await);
    assert!(!verdict("/compatibility/subjects/accounts-value/versions").await);

    // Plain BACKWARD judges the whole subject by its latest version only.
    app.put_config("/config/accounts-value", "BACKWARD").await;
    assert!(verdict("/compatibility/subjects/accounts-value/versions").await);
}
