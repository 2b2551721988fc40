//! Confluent's REST surface over a real socket: every endpoint, every error code, media types.

use axum::http::StatusCode;
use serde_json::{Value, json};
use sqlx::PgPool;

use crate::server::spawn_app;
use crate::{CONTENT_TYPE_V1, assert_error, user_schema, user_schema_v2};

#[sqlx::test(migrations = "../migrations")]
async fn request_media_types(pool: PgPool) {
    let app = spawn_app(pool).await;
    let body = json!({ "schema": user_schema() }).to_string();
    for content_type in [
        Some("application/vnd.schemaregistry.v1+json"),
        Some("application/vnd.schemaregistry+json"),
        Some("application/json"),
        Some("application/octet-stream"),
        Some("application/json; charset=utf-8"),
        None,
    ] {
        let response = app
            .send(
                "POST",
                "/subjects/users-value/versions",
                content_type,
                body.as_bytes(),
            )
            .await;
        assert_eq!(
            response.json(),
            (StatusCode::OK, json!({ "id": 1 })),
            "{content_type:?}"
        );
    }

    let response = app
        .send(
            "POST",
            "/subjects/users-value/versions",
            Some("text/plain"),
            body.as_bytes(),
        )
        .await;
    assert_error(&response.json(), StatusCode::UNSUPPORTED_MEDIA_TYPE, 415);
    let response = app
        .send(
            "POST",
            "/subjects/users-value/versions",
            Some(CONTENT_TYPE_V1),
            b"{\"schema\": ",
        )
        .await;
    assert_error(&response.json(), StatusCode::BAD_REQUEST, 400);
    let response = app
        .send(
            "POST",
            "/subjects/users-value/versions",
            Some(CONTENT_TYPE_V1),
            b"{\"schema\": 7}",
        )
        .await;
    assert_error(&response.json(), StatusCode::UNPROCESSABLE_ENTITY, 422);
}

#[sqlx::test(migrations = "../migrations")]
async fn read_endpoints(pool: PgPool) {
    let app = spawn_app(pool).await;
    app.register_ok("users-value", &user_schema()).await;
    app.register_ok("users-value", &user_schema_v2()).await;
    app.register_ok("payments-value", &user_schema()).await;

    // Nested routers answer their root without the trailing slash.
    assert_eq!(app.get("").await, (StatusCode::OK, json!({})));
    assert_eq!(app.get("/schemas/types").await.1, json!(["AVRO"]));
    assert_eq!(
        app.get("/subjects").await.1,
        json!(["payments-value", "users-value"])
    );
    assert_eq!(
        app.get("/subjects?subjectPrefix=user").await.1,
        json!(["users-value"])
    );
    assert_eq!(
        app.get("/subjects?subjectPrefix=nothing").await.1,
        json!([])
    );
    // Pages as Confluent pages them: offset and limit, -1 the default (and largest) page.
    assert_eq!(
        app.get("/subjects?offset=1&limit=1").await.1,
        json!(["users-value"])
    );
    assert_eq!(
        app.get("/subjects?offset=0&limit=1").await.1,
        json!(["payments-value"])
    );
    assert_eq!(app.get("/subjects?offset=2&limit=-1").await.1, json!([]));
    for bad in ["limit=0", "limit=1001", "offset=-1", "offset=x"] {
        let (status, body) = app.get(&format!("/subjects?{bad}")).await;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{bad}: {body}");
        assert_eq!(body["error_code"], 422, "{bad}: {body}");
    }
    assert_eq!(
        app.get("/subjects/users-value/versions").await.1,
        json!([1, 2])
    );
    assert_eq!(
        app.get("/subjects/users-value/versions/latest").await.1,
        json!({ "subject": "users-value", "version": 2, "id": 2, "schema": user_schema_v2() })
    );
    assert_eq!(
        app.get("/subjects/users-value/versions/1/referencedby")
            .await
            .1,
        json!([])
    );
    assert_eq!(
        app.get("/schemas/ids/1").await.1,
        json!({ "schema": user_schema() })
    );
    assert_eq!(
        app.get("/schemas/ids/1/versions").await.1,
        json!([
            { "subject": "payments-value", "version": 1 },
            { "subject": "users-value", "version": 1 }
        ])
    );
    assert_eq!(
        app.get("/schemas/ids/1/subjects").await.1,
        json!(["payments-value", "users-value"])
    );

    // The raw schema endpoints return the schema document itself.
    let parsed_v1: Value = serde_json::from_str(&user_schema()).unwrap();
    for path in [
        "/schemas/ids/1/schema",
        "/subjects/users-value/versions/1/schema",
    ] {
        assert_eq!(app.get(path).await, (StatusCode::OK, parsed_v1.clone()));
    }

    let (status, found) = app
        .post(
            "/subjects/users-value",
            json!({ "schema": user_schema_v2() }),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(found["version"], 2);

    // Soft-deleted versions are found again only with ?deleted=true.
    app.delete("/subjects/users-value/versions/2").await;
    assert_error(
        &app.post(
            "/subjects/users-value",
            json!({ "schema": user_schema_v2() }),
        )
        .await,
        StatusCode::NOT_FOUND,
        40403,
    );
    assert_eq!(
        app.post(
            "/subjects/users-value?deleted=true",
            json!({ "schema": user_schema_v2() })
        )
        .await
        .1["version"],
        2
    );
}

#[sqlx::test(migrations = "../migrations")]
async fn config_endpoints(pool: PgPool) {
    let app = spawn_app(pool).await;
    assert_eq!(
        app.get("/config").await.1,
        json!({ "compatibilityLevel": "BACKWARD" })
    );
    assert_eq!(
        app.put_config("/config", "full_transitive").await,
        (
            StatusCode::OK,
            json!({ "compatibility": "FULL_TRANSITIVE" })
        )
    );
    assert_eq!(
        app.get("/config/users-value?defaultToGlobal=true").await.1,
        json!({ "compatibilityLevel": "FULL_TRANSITIVE" })
    );
    assert_eq!(
        app.put_config("/config/users-value", "NONE").await,
        (StatusCode::OK, json!({ "compatibility": "NONE" }))
    );
    assert_eq!(
        app.get("/config/users-value").await.1,
        json!({ "compatibilityLevel": "NONE" })
    );
    assert_eq!(
        app.delete("/config/users-value").await,
        (StatusCode::OK, json!({ "compatibilityLevel": "NONE" }))
    );
    assert_eq!(
        app.delete("/config").await,
        (
            StatusCode::OK,
            json!({ "compatibilityLevel": "FULL_TRANSITIVE" })
        )
    );
    assert_eq!(
        app.get("/config").await.1,
        json!({ "compatibilityLevel": "BACKWARD" })
    );
}

/// One request per Confluent error code the registry uses (409 is in `compatibility.rs`, as it
/// needs the checker).
#[sqlx::test(migrations = "../migrations")]
async fn every_error_code(pool: PgPool) {
    let app = spawn_app(pool.clone()).await;
    app.register_ok("users-value", &user_schema()).await;
    app.register_ok("users-value", &user_schema_v2()).await;
    app.register_ok("gone-value", &user_schema()).await;

    let cases: Vec<(&str, &str, Option<Value>, StatusCode, i64)> = vec![
        (
            "GET",
            "/subjects/nobody/versions",
            None,
            StatusCode::NOT_FOUND,
            40401,
        ),
        (
            "GET",
            "/subjects/users-value/versions/9",
            None,
            StatusCode::NOT_FOUND,
            40402,
        ),
        ("GET", "/schemas/ids/99", None, StatusCode::NOT_FOUND, 40403),
        (
            "GET",
            "/schemas/ids/99/subjects",
            None,
            StatusCode::NOT_FOUND,
            40403,
        ),
        (
            "POST",
            "/subjects/users-value",
            Some(json!({ "schema": r#"{"type":"enum","name":"E","symbols":["A"]}"# })),
            StatusCode::NOT_FOUND,
            40403,
        ),
        (
            "DELETE",
            "/subjects/users-value?permanent=true",
            None,
            StatusCode::NOT_FOUND,
            40405,
        ),
        (
            "DELETE",
            "/subjects/users-value/versions/1?permanent=true",
            None,
            StatusCode::NOT_FOUND,
            40407,
        ),
        (
            "GET",
            "/config/users-value",
            None,
            StatusCode::NOT_FOUND,
            40408,
        ),
        (
            "GET",
            "/mode/users-value",
            None,
            StatusCode::NOT_FOUND,
            40409,
        ),
        (
            "POST",
            "/subjects/users-value/versions",
            Some(json!({ "schema": "{\"type\":\"nope\"}" })),
            StatusCode::UNPROCESSABLE_ENTITY,
            42201,
        ),
        (
            "GET",
            "/subjects/users-value/versions/0",
            None,
            StatusCode::UNPROCESSABLE_ENTITY,
            42202,
        ),
        (
            "PUT",
            "/config/users-value",
            Some(json!({ "compatibility": "SIDEWAYS" })),
            StatusCode::UNPROCESSABLE_ENTITY,
            42203,
        ),
        (
            "PUT",
            "/mode/users-value",
            Some(json!({ "mode": "WRITEONLY" })),
            StatusCode::UNPROCESSABLE_ENTITY,
            42204,
        ),
        (
            "PUT",
            "/mode/users-value",
            Some(json!({ "mode": "IMPORT" })),
            StatusCode::UNPROCESSABLE_ENTITY,
            42205,
        ),
        ("GET", "/no/such/route", None, StatusCode::NOT_FOUND, 404),
        (
            "PATCH",
            "/subjects",
            None,
            StatusCode::METHOD_NOT_ALLOWED,
            405,
        ),
    ];
    for (method, path, body, status, code) in cases {
        let response = app.call(method, path, body).await;
        assert_eq!(response.0, status, "{method} {path}: {}", response.1);
        assert_eq!(
            response.1["error_code"], code,
            "{method} {path}: {}",
            response.1
        );
        assert!(response.1["message"].is_string(), "{method} {path}");
    }

    // The soft-delete pairs need a first delete.
    app.delete("/subjects/gone-value").await;
    let message = assert_error(
        &app.delete("/subjects/gone-value").await,
        StatusCode::NOT_FOUND,
        40404,
    );
    assert_eq!(
        message,
        "Subject 'gone-value' was soft deleted.Set permanent=true to delete permanently"
    );
    app.delete("/subjects/users-value/versions/1").await;
    let message = assert_error(
        &app.delete("/subjects/users-value/versions/1").await,
        StatusCode::NOT_FOUND,
        40406,
    );
    assert_eq!(
        message,
        "Subject 'users-value' Version 1 was soft deleted.Set permanent=true to delete permanently"
    );

    // An import naming the id another schema has.
    app.put_mode("/mode/import-value", "IMPORT").await;
    assert_error(
        &app.post(
            "/subjects/import-value/versions",
            json!({ "schema": user_schema(), "id": 5 }),
        )
        .await,
        StatusCode::UNPROCESSABLE_ENTITY,
        42207,
    );

    sqlx::query("DROP TABLE schema_registry_mode")
        .execute(&pool)
        .await
        .unwrap();
    let message = assert_error(
        &app.get("/mode").await,
        StatusCode::INTERNAL_SERVER_ERROR,
        50001,
    );
    assert_eq!(message, "Error in the backend data store");
}

/// Many clients registering the same new schema at once (every producer starting together)
/// get one version and one id.
#[sqlx::test(migrations = "../migrations")]
async fn concurrent_registrations_over_http_give_one_version(pool: PgPool) {
    let app = std::sync::Arc::new(spawn_app(pool).await);
    for round in 0..4 {
        let subject = format!("race-{round}-value");
        let schema = format!(
            r#"{{"type":"record","name":"Race{round}","fields":[{{"name":"n","type":"int"}}]}}"#
        );
        let tasks: Vec<_> = (0..8)
            .map(|_| {
                let app = app.clone();
                let subject = subject.clone();
                let schema = schema.clone();
                tokio::spawn(async move { app.register(&subject, &schema).await })
            })
            .collect();
        for task in tasks {
            assert_eq!(
                task.await.unwrap(),
                (StatusCode::OK, json!({ "id": round + 1 })),
                "round {round}"
            );
        }
        assert_eq!(
            app.get(&format!("/subjects/{subject}/versions")).await.1,
            json!([1])
        );
    }
}

/// A NUL in a path segment or a query value (no subject can hold one: Postgres's text
/// cannot) is the client's 400, in Confluent's shape, not the backend's 500.
#[sqlx::test(migrations = "../migrations")]
async fn a_nul_in_the_path_or_the_query_is_a_400(pool: PgPool) {
    let app = spawn_app(pool).await;
    app.register_ok("users-value", &user_schema()).await;
    for path in [
        "/subjects/%00/versions",
        "/subjects/users%00-value/versions/1",
        "/subjects?subjectPrefix=%00",
        "/config/%00",
        "/schemas/ids/1/versions?subject=%00",
    ] {
        let (status, body) = app.get(path).await;
        assert_eq!(
            (status, body["error_code"].as_i64()),
            (StatusCode::BAD_REQUEST, Some(400)),
            "{path}: {body}"
        );
    }
    assert_error(
        &app.post("/subjects/%00", json!({ "schema": user_schema() }))
            .await,
        StatusCode::BAD_REQUEST,
        400,
    );
    assert_error(
        &app.post("/subjects/%00/versions", json!({ "schema": user_schema() }))
            .await,
        StatusCode::BAD_REQUEST,
        400,
    );
}

/// What a name or a number cannot hold. An empty subject (the name the global settings are
/// kept under) or one over 1,000 bytes is a 422 for every write, and the global settings stay
/// as they were; a version after the highest there is (an import may take it) is a 422, not
/// an overflow.
#[sqlx::test(migrations = "../migrations")]
async fn names_and_numbers_past_their_limits_are_refused(pool: PgPool) {
    let app = spawn_app(pool).await;
    assert_eq!(app.put_config("/config", "FULL").await.0, StatusCode::OK);
    let long = "s".repeat(1001);
    let schema = json!({ "schema": user_schema() });
    for (method, path, body) in [
        (
            "POST",
            "/subjects//versions".to_string(),
            Some(schema.clone()),
        ),
        (
            "POST",
            format!("/subjects/{long}/versions"),
            Some(schema.clone()),
        ),
        (
            "PUT",
            format!("/config/{long}"),
            Some(json!({"compatibility": "NONE"})),
        ),
        (
            "PUT",
            format!("/mode/{long}"),
            Some(json!({"mode": "READONLY"})),
        ),
        ("DELETE", "/subjects//versions/latest".to_string(), None),
    ] {
        let refused = app.call(method, &path, body).await;
        let message = assert_error(&refused, StatusCode::UNPROCESSABLE_ENTITY, 422);
        assert!(
            message.starts_with("the subject name is"),
            "{method} {path}: {message}"
        );
    }
    assert_eq!(app.get("/config").await.1["compatibilityLevel"], "FULL");
    app.register_ok(&"s".repeat(1000), &user_schema()).await;

    assert_eq!(app.put_mode("/mode/top", "IMPORT").await.0, StatusCode::OK);
    let imported = app
        .post(
            "/subjects/top/versions",
            json!({"schema": "\"string\"", "id": 1000, "version": i32::MAX}),
        )
        .await;
    assert_eq!(imported.0, StatusCode::OK, "{}", imported.1);
    assert_eq!(
        app.put_mode("/mode/top", "READWRITE").await.0,
        StatusCode::OK
    );
    assert_eq!(
        app.put_config("/config/top", "NONE").await.0,
        StatusCode::OK
    );
    let after = app
        .post("/subjects/top/versions", json!({"schema": "\"bytes\""}))
        .await;
    let message = assert_error(&after, StatusCode::UNPROCESSABLE_ENTITY, 42205);
    assert!(message.contains("highest version"), "{message}");
}
