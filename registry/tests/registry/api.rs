use axum::body::Body;
use axum::http::{Method, Request, StatusCode, header};
use serde_json::json;
use sqlx::PgPool;

use crate::{
    assert_error, call, call_raw, get, register, user_schema, user_schema_reformatted,
    user_schema_v2,
};

#[sqlx::test(migrations = "../migrations")]
async fn register_returns_id_and_version(pool: PgPool) {
    let app = crate::authorized_router(pool).await;

    let (status, body) = register(&app, "users-value", &user_schema()).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body, json!({ "id": 1 }));

    assert_eq!(get(&app, "/subjects").await.1, json!(["users-value"]));
    assert_eq!(
        get(&app, "/subjects/users-value/versions").await.1,
        json!([1])
    );
    let (status, body) = get(&app, "/subjects/users-value/versions/1").await;
    assert_eq!(status, StatusCode::OK);
    // Confluent leaves schemaType out for AVRO.
    assert_eq!(
        body,
        json!({ "subject": "users-value", "version": 1, "id": 1, "schema": user_schema() })
    );
}

#[sqlx::test(migrations = "../migrations")]
async fn reregistering_the_same_schema_keeps_id_and_version(pool: PgPool) {
    let app = crate::authorized_router(pool).await;
    assert_eq!(
        register(&app, "users-value", &user_schema()).await.1["id"],
        1
    );

    let (status, body) = register(&app, "users-value", &user_schema_reformatted()).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body, json!({ "id": 1 }));
    assert_eq!(
        get(&app, "/subjects/users-value/versions").await.1,
        json!([1])
    );
}

#[sqlx::test(migrations = "../migrations")]
async fn same_schema_in_another_subject_shares_the_id(pool: PgPool) {
    let app = crate::authorized_router(pool).await;
    assert_eq!(register(&app, "a-value", &user_schema()).await.1["id"], 1);
    assert_eq!(
        register(&app, "b-value", &user_schema_v2()).await.1["id"],
        2
    );
    assert_eq!(register(&app, "b-value", &user_schema()).await.1["id"], 1);

    let (_, body) = get(&app, "/subjects/b-value/versions/latest").await;
    assert_eq!(body["version"], 2);
    assert_eq!(body["id"], 1);
    assert_eq!(
        get(&app, "/schemas/ids/1/versions").await.1,
        json!([
            { "subject": "a-value", "version": 1 },
            { "subject": "b-value", "version": 2 }
        ])
    );
    assert_eq!(
        get(&app, "/schemas/ids/1/subjects").await.1,
        json!(["a-value", "b-value"])
    );
    assert_eq!(
        get(&app, "/subjects").await.1,
        json!(["a-value", "b-value"])
    );
}

#[sqlx::test(migrations = "../migrations")]
async fn versions_and_latest(pool: PgPool) {
    let app = crate::authorized_router(pool).await;
    register(&app, "users-value", &user_schema()).await;
    assert_eq!(
        register(&app, "users-value", &user_schema_v2()).await.1["id"],
        2
    );

    assert_eq!(
        get(&app, "/subjects/users-value/versions").await.1,
        json!([1, 2])
    );
    for latest in ["latest", "-1"] {
        let (status, body) = get(&app, &format!("/subjects/users-value/versions/{latest}")).await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(body["version"], 2);
        assert_eq!(body["id"], 2);
        assert_eq!(body["schema"], user_schema_v2());
    }

    // The schema endpoint returns the schema itself, not a JSON string holding it.
    let (status, body) = get(&app, "/subjects/users-value/versions/1/schema").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        body,
        serde_json::from_str::<serde_json::Value>(&user_schema()).unwrap()
    );

    assert_error(
        &get(&app, "/subjects/users-value/versions/3").await,
        StatusCode::NOT_FOUND,
        40402,
    );
    for invalid in ["0", "-2", "abc", "2147483648"] {
        assert_error(
            &get(&app, &format!("/subjects/users-value/versions/{invalid}")).await,
            StatusCode::UNPROCESSABLE_ENTITY,
            42202,
        );
    }
}

#[sqlx::test(migrations = "../migrations")]
async fn lookup(pool: PgPool) {
    let app = crate::authorized_router(pool).await;
    register(&app, "users-value", &user_schema()).await;
    register(&app, "users-value", &user_schema_v2()).await;

    let (status, body) = call(
        &app,
        Method::POST,
        "/subjects/users-value",
        Some(json!({ "schema": user_schema_reformatted() })),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        body,
        json!({ "subject": "users-value", "version": 1, "id": 1, "schema": user_schema() })
    );

    let other = r#"{"type":"record","name":"Other","fields":[]}"#;
    assert_error(
        &call(
            &app,
            Method::POST,
            "/subjects/users-value",
            Some(json!({ "schema": other })),
        )
        .await,
        StatusCode::NOT_FOUND,
        40403,
    );
    assert_error(
        &call(
            &app,
            Method::POST,
            "/subjects/nobody",
            Some(json!({ "schema": user_schema() })),
        )
        .await,
        StatusCode::NOT_FOUND,
        40401,
    );
}

#[sqlx::test(migrations = "../migrations")]
async fn schema_by_id(pool: PgPool) {
    let app = crate::authorized_router(pool).await;
    register(&app, "users-value", &user_schema()).await;

    assert_eq!(
        get(&app, "/schemas/ids/1").await,
        (StatusCode::OK, json!({ "schema": user_schema() }))
    );
    // The converter client always asks with ?deleted=true.
    assert_eq!(
        get(&app, "/schemas/ids/1?deleted=true").await.0,
        StatusCode::OK
    );
    assert_error(
        &get(&app, "/schemas/ids/99").await,
        StatusCode::NOT_FOUND,
        40403,
    );
    assert_error(
        &get(&app, "/schemas/ids/99/versions").await,
        StatusCode::NOT_FOUND,
        40403,
    );
}

#[sqlx::test(migrations = "../migrations")]
async fn invalid_requests(pool: PgPool) {
    let app = crate::authorized_router(pool).await;

    let message = assert_error(
        &register(&app, "users-value", r#"{"type":"record","name":"Broken"}"#).await,
        StatusCode::UNPROCESSABLE_ENTITY,
        42201,
    );
    assert!(message.starts_with("Invalid schema"), "{message}");
    assert_error(
        &register(&app, "users-value", "not json").await,
        StatusCode::UNPROCESSABLE_ENTITY,
        42201,
    );

    let message = assert_error(
        &call(
            &app,
            Method::POST,
            "/subjects/users-value/versions",
            Some(json!({ "schema": "syntax = \"proto3\";", "schemaType": "PROTOBUF" })),
        )
        .await,
        StatusCode::UNPROCESSABLE_ENTITY,
        42201,
    );
    assert!(message.contains("only AVRO is supported"), "{message}");

    // An explicit AVRO type is fine.
    let (status, _) = call(
        &app,
        Method::POST,
        "/subjects/users-value/versions",
        Some(json!({ "schema": user_schema(), "schemaType": "AVRO", "references": [] })),
    )
    .await;
    assert_eq!(status, StatusCode::OK);

    let malformed = Request::post("/subjects/users-value/versions")
        .header(header::CONTENT_TYPE, "application/json")
        .body(Body::from("{\"schema\": "))
        .unwrap();
    assert_error(
        &call_raw(&app, malformed).await,
        StatusCode::BAD_REQUEST,
        400,
    );

    let wrong_type = Request::post("/subjects/users-value/versions")
        .header(header::CONTENT_TYPE, "text/plain")
        .body(Body::from(json!({ "schema": user_schema() }).to_string()))
        .unwrap();
    assert_error(
        &call_raw(&app, wrong_type).await,
        StatusCode::UNSUPPORTED_MEDIA_TYPE,
        415,
    );

    // No content type at all is accepted, as are the other schema registry media types.
    let untyped = Request::post("/subjects/users-value/versions")
        .body(Body::from(json!({ "schema": user_schema() }).to_string()))
        .unwrap();
    assert_eq!(call_raw(&app, untyped).await.1, json!({ "id": 1 }));
    let legacy = Request::post("/subjects/users-value/versions")
        .header(
            header::CONTENT_TYPE,
            "application/vnd.schemaregistry+json; charset=utf-8",
        )
        .body(Body::from(json!({ "schema": user_schema() }).to_string()))
        .unwrap();
    assert_eq!(call_raw(&app, legacy).await.1, json!({ "id": 1 }));

    assert_error(
        &get(&app, "/no/such/route").await,
        StatusCode::NOT_FOUND,
        404,
    );
    assert_error(
        &get(&app, "/schemas/ids/abc").await,
        StatusCode::NOT_FOUND,
        404,
    );
    assert_error(
        &call(&app, Method::PATCH, "/subjects", None).await,
        StatusCode::METHOD_NOT_ALLOWED,
        405,
    );
}

#[sqlx::test(migrations = "../migrations")]
async fn unknown_subject(pool: PgPool) {
    let app = crate::authorized_router(pool).await;
    for uri in [
        "/subjects/nobody/versions",
        "/subjects/nobody/versions/1",
        "/subjects/nobody/versions/latest",
        "/subjects/nobody/versions/latest/schema",
    ] {
        let message = assert_error(&get(&app, uri).await, StatusCode::NOT_FOUND, 40401);
        assert_eq!(message, "Subject 'nobody' not found.");
    }
    assert_error(
        &call(&app, Method::DELETE, "/subjects/nobody", None).await,
        StatusCode::NOT_FOUND,
        40401,
    );
    assert_eq!(get(&app, "/subjects").await.1, json!([]));
}

#[sqlx::test(migrations = "../migrations")]
async fn config(pool: PgPool) {
    let app = crate::authorized_router(pool).await;
    let put = |uri: &'static str, level: &'static str| {
        let app = app.clone();
        async move {
            call(
                &app,
                Method::PUT,
                uri,
                Some(json!({ "compatibility": level })),
            )
            .await
        }
    };

    assert_eq!(
        get(&app, "/config").await,
        (StatusCode::OK, json!({ "compatibilityLevel": "BACKWARD" }))
    );
    assert_eq!(
        put("/config", "FULL").await,
        (StatusCode::OK, json!({ "compatibility": "FULL" }))
    );
    assert_eq!(
        get(&app, "/config").await.1,
        json!({ "compatibilityLevel": "FULL" })
    );
    assert_error(
        &put("/config", "SIDEWAYS").await,
        StatusCode::UNPROCESSABLE_ENTITY,
        42203,
    );
    assert_error(
        &call(&app, Method::PUT, "/config", Some(json!({}))).await,
        StatusCode::UNPROCESSABLE_ENTITY,
        42203,
    );

    assert_error(
        &get(&app, "/config/users-value").await,
        StatusCode::NOT_FOUND,
        40408,
    );
    assert_eq!(
        get(&app, "/config/users-value?defaultToGlobal=true").await,
        (StatusCode::OK, json!({ "compatibilityLevel": "FULL" }))
    );
    assert_eq!(
        put("/config/users-value", "forward_transitive").await,
        (
            StatusCode::OK,
            json!({ "compatibility": "FORWARD_TRANSITIVE" })
        )
    );
    assert_eq!(
        get(&app, "/config/users-value").await.1,
        json!({ "compatibilityLevel": "FORWARD_TRANSITIVE" })
    );
    assert_eq!(
        get(&app, "/config/users-value?defaultToGlobal=true")
            .await
            .1,
        json!({ "compatibilityLevel": "FORWARD_TRANSITIVE" })
    );
    // The subject level doesn't leak into the global one.
    assert_eq!(
        get(&app, "/config").await.1,
        json!({ "compatibilityLevel": "FULL" })
    );

    assert_eq!(
        call(&app, Method::DELETE, "/config/users-value", None).await,
        (
            StatusCode::OK,
            json!({ "compatibilityLevel": "FORWARD_TRANSITIVE" })
        )
    );
    assert_error(
        &get(&app, "/config/users-value").await,
        StatusCode::NOT_FOUND,
        40408,
    );
    assert_error(
        &call(&app, Method::DELETE, "/config/users-value", None).await,
        StatusCode::NOT_FOUND,
        40401,
    );

    assert_eq!(
        call(&app, Method::DELETE, "/config", None).await.1,
        json!({ "compatibilityLevel": "FULL" })
    );
    assert_eq!(
        get(&app, "/config").await.1,
        json!({ "compatibilityLevel": "BACKWARD" })
    );
}

#[sqlx::test(migrations = "../migrations")]
async fn delete_subject_soft_then_permanent(pool: PgPool) {
    let app = crate::authorized_router(pool).await;
    register(&app, "users-value", &user_schema()).await;
    register(&app, "users-value", &user_schema_v2()).await;
    register(&app, "other-value", &user_schema()).await;

    assert_error(
        &call(
            &app,
            Method::DELETE,
            "/subjects/users-value?permanent=true",
            None,
        )
        .await,
        StatusCode::NOT_FOUND,
        40405,
    );
    assert_eq!(
        call(&app, Method::DELETE, "/subjects/users-value", None).await,
        (StatusCode::OK, json!([1, 2]))
    );

    assert_error(
        &get(&app, "/subjects/users-value/versions").await,
        StatusCode::NOT_FOUND,
        40401,
    );
    assert_error(
        &get(&app, "/subjects/users-value/versions/latest").await,
        StatusCode::NOT_FOUND,
        40401,
    );
    assert_eq!(get(&app, "/subjects").await.1, json!(["other-value"]));
    assert_eq!(
        get(&app, "/subjects?deleted=true").await.1,
        json!(["other-value", "users-value"])
    );
    assert_eq!(
        get(&app, "/subjects/users-value/versions?deleted=true")
            .await
            .1,
        json!([1, 2])
    );
    assert_eq!(
        get(&app, "/subjects/users-value/versions/2?deleted=true")
            .await
            .1["id"],
        2
    );
    assert_eq!(
        get(&app, "/schemas/ids/1/subjects").await.1,
        json!(["other-value"])
    );
    assert_eq!(
        get(&app, "/schemas/ids/1/subjects?deleted=true").await.1,
        json!(["other-value", "users-value"])
    );
    assert_error(
        &call(&app, Method::DELETE, "/subjects/users-value", None).await,
        StatusCode::NOT_FOUND,
        40404,
    );

    assert_eq!(
        call(
            &app,
            Method::DELETE,
            "/subjects/users-value?permanent=true",
            None
        )
        .await,
        (StatusCode::OK, json!([1, 2]))
    );
    assert_eq!(
        get(&app, "/subjects?deleted=true").await.1,
        json!(["other-value"])
    );
    assert_error(
        &call(
            &app,
            Method::DELETE,
            "/subjects/users-value?permanent=true",
            None,
        )
        .await,
        StatusCode::NOT_FOUND,
        40401,
    );
    // Ids stay resolvable: messages written with them may still be in Kafka.
    assert_eq!(get(&app, "/schemas/ids/2").await.0, StatusCode::OK);

    // A re-created subject starts over, reusing the global id of a known schema.
    assert_eq!(
        register(&app, "users-value", &user_schema_v2()).await.1["id"],
        2
    );
    assert_eq!(
        get(&app, "/subjects/users-value/versions").await.1,
        json!([1])
    );
}

#[sqlx::test(migrations = "../migrations")]
async fn delete_version_soft_then_permanent(pool: PgPool) {
    let app = crate::authorized_router(pool).await;
    register(&app, "users-value", &user_schema()).await;
    register(&app, "users-value", &user_schema_v2()).await;

    assert_error(
        &call(
            &app,
            Method::DELETE,
            "/subjects/users-value/versions/1?permanent=true",
            None,
        )
        .await,
        StatusCode::NOT_FOUND,
        40407,
    );
    assert_eq!(
        call(
            &app,
            Method::DELETE,
            "/subjects/users-value/versions/1",
            None
        )
        .await,
        (StatusCode::OK, json!(1))
    );
    assert_eq!(
        get(&app, "/subjects/users-value/versions").await.1,
        json!([2])
    );
    assert_error(
        &get(&app, "/subjects/users-value/versions/1").await,
        StatusCode::NOT_FOUND,
        40402,
    );
    assert_eq!(
        get(&app, "/subjects/users-value/versions/1?deleted=true")
            .await
            .1["id"],
        1
    );
    assert_error(
        &call(
            &app,
            Method::DELETE,
            "/subjects/users-value/versions/1",
            None,
        )
        .await,
        StatusCode::NOT_FOUND,
        40406,
    );
    assert_eq!(
        call(
            &app,
            Method::DELETE,
            "/subjects/users-value/versions/1?permanent=true",
            None
        )
        .await,
        (StatusCode::OK, json!(1))
    );
    assert_eq!(
        get(&app, "/subjects/users-value/versions?deleted=true")
            .await
            .1,
        json!([2])
    );

    // Re-registering a deleted schema makes it a new version; numbers only ever grow while a
    // version row exists.
    assert_eq!(
        register(&app, "users-value", &user_schema()).await.1["id"],
        1
    );
    assert_eq!(
        get(&app, "/subjects/users-value/versions").await.1,
        json!([2, 3])
    );
    assert_eq!(
        call(
            &app,
            Method::DELETE,
            "/subjects/users-value/versions/latest",
            None
        )
        .await,
        (StatusCode::OK, json!(3))
    );
}

#[sqlx::test(migrations = "../migrations")]
async fn backend_errors_are_opaque(pool: PgPool) {
    let app = crate::authorized_router(pool.clone()).await;
    sqlx::query("DROP TABLE schema_registry_subject_versions")
        .execute(&pool)
        .await
        .unwrap();
    let response = get(&app, "/subjects").await;
    let message = assert_error(&response, StatusCode::INTERNAL_SERVER_ERROR, 50001);
    assert_eq!(message, "Error in the backend data store");
}
