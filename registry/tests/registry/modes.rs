//! `/mode`: READWRITE, READONLY and IMPORT, globally and per subject.

use axum::http::StatusCode;
use serde_json::json;
use sqlx::PgPool;

use crate::server::spawn_app;
use crate::{assert_error, user_schema, user_schema_broken, user_schema_v2};

#[sqlx::test(migrations = "../migrations")]
async fn mode_endpoints(pool: PgPool) {
    let app = spawn_app(pool).await;

    assert_eq!(
        app.get("/mode").await,
        (StatusCode::OK, json!({ "mode": "READWRITE" }))
    );
    let message = assert_error(
        &app.get("/mode/users-value").await,
        StatusCode::NOT_FOUND,
        40409,
    );
    assert_eq!(
        message,
        "Subject 'users-value' does not have subject-level mode configured"
    );
    assert_eq!(
        app.get("/mode/users-value?defaultToGlobal=true").await.1,
        json!({ "mode": "READWRITE" })
    );

    assert_eq!(
        app.put_mode("/mode/users-value", "readonly").await,
        (StatusCode::OK, json!({ "mode": "READONLY" }))
    );
    assert_eq!(
        app.get("/mode/users-value").await.1,
        json!({ "mode": "READONLY" })
    );
    assert_eq!(app.get("/mode").await.1, json!({ "mode": "READWRITE" }));

    assert_eq!(
        app.put_mode("/mode", "IMPORT").await,
        (StatusCode::OK, json!({ "mode": "IMPORT" }))
    );
    assert_eq!(
        app.get("/mode/other-value?defaultToGlobal=true").await.1,
        json!({ "mode": "IMPORT" })
    );
    // The subject's own mode wins over the global one.
    assert_eq!(
        app.get("/mode/users-value?defaultToGlobal=true").await.1,
        json!({ "mode": "READONLY" })
    );

    for path in ["/mode", "/mode/users-value"] {
        assert_error(
            &app.put_mode(path, "READ_SOMETIMES").await,
            StatusCode::UNPROCESSABLE_ENTITY,
            42204,
        );
        assert_error(
            &app.put(path, json!({})).await,
            StatusCode::UNPROCESSABLE_ENTITY,
            42204,
        );
    }

    assert_eq!(
        app.delete("/mode/users-value").await,
        (StatusCode::OK, json!({ "mode": "READONLY" }))
    );
    assert_error(
        &app.get("/mode/users-value").await,
        StatusCode::NOT_FOUND,
        40409,
    );
    assert_error(
        &app.delete("/mode/users-value").await,
        StatusCode::NOT_FOUND,
        40401,
    );
    assert_eq!(
        app.put_mode("/mode", "READWRITE").await.1,
        json!({ "mode": "READWRITE" })
    );
    assert_eq!(app.get("/mode").await.1, json!({ "mode": "READWRITE" }));
}

#[sqlx::test(migrations = "../migrations")]
async fn read_only_refuses_registration_and_deletion(pool: PgPool) {
    let app = spawn_app(pool).await;
    assert_eq!(app.register_ok("users-value", &user_schema()).await, 1);
    app.put_mode("/mode/users-value", "READONLY").await;

    let message = assert_error(
        &app.register("users-value", &user_schema_v2()).await,
        StatusCode::UNPROCESSABLE_ENTITY,
        42205,
    );
    assert_eq!(message, "Subject users-value is in read-only mode");
    for path in [
        "/subjects/users-value",
        "/subjects/users-value/versions/1",
        "/subjects/users-value/versions/latest",
    ] {
        assert_error(
            &app.delete(path).await,
            StatusCode::UNPROCESSABLE_ENTITY,
            42205,
        );
    }
    // A schema the subject already has is answered, as Confluent does; reads work.
    assert_eq!(
        app.register("users-value", &user_schema()).await,
        (StatusCode::OK, json!({ "id": 1 }))
    );
    assert_eq!(
        app.get("/subjects/users-value/versions/latest").await.1["id"],
        1
    );
    // Other subjects are unaffected.
    assert_eq!(app.register_ok("other-value", &user_schema_v2()).await, 2);

    // A global READONLY covers every subject without a mode of its own.
    app.delete("/mode/users-value").await;
    app.put_mode("/mode", "READONLY").await;
    for subject in ["users-value", "new-value"] {
        assert_error(
            &app.register(subject, &user_schema_v2()).await,
            StatusCode::UNPROCESSABLE_ENTITY,
            42205,
        );
    }
    app.put_mode("/mode/new-value", "READWRITE").await;
    assert_eq!(app.register_ok("new-value", &user_schema_v2()).await, 2);
}

#[sqlx::test(migrations = "../migrations")]
async fn explicit_ids_and_versions_need_import_mode(pool: PgPool) {
    let app = spawn_app(pool).await;
    for body in [
        json!({ "schema": user_schema(), "id": 5 }),
        json!({ "schema": user_schema(), "version": 2 }),
    ] {
        let message = assert_error(
            &app.post("/subjects/users-value/versions", body).await,
            StatusCode::UNPROCESSABLE_ENTITY,
            42205,
        );
        assert_eq!(message, "Subject users-value is not in import mode");
    }
    // Confluent's "not given" values.
    assert_eq!(
        app.post(
            "/subjects/users-value/versions",
            json!({ "schema": user_schema(), "id": -1, "version": 0 })
        )
        .await,
        (StatusCode::OK, json!({ "id": 1 }))
    );
}

#[sqlx::test(migrations = "../migrations")]
async fn import_stores_schemas_under_the_given_ids_and_versions(pool: PgPool) {
    let app = spawn_app(pool).await;
    assert_eq!(
        app.put_mode("/mode/imported-value", "IMPORT").await,
        (StatusCode::OK, json!({ "mode": "IMPORT" }))
    );
    let import = |schema: String, id: i64, version: Option<i64>| {
        let mut body = json!({ "schema": schema, "id": id });
        if let Some(version) = version {
            body["version"] = json!(version);
        }
        app.post("/subjects/imported-value/versions", body)
    };

    assert_eq!(
        import(user_schema(), 100, Some(3)).await,
        (StatusCode::OK, json!({ "id": 100 }))
    );
    // No compatibility check in IMPORT mode, and no version means the next one.
    assert_eq!(
        import(user_schema_broken(), 101, None).await,
        (StatusCode::OK, json!({ "id": 101 }))
    );
    assert_eq!(
        app.get("/subjects/imported-value/versions").await.1,
        json!([3, 4])
    );
    assert_eq!(
        app.get("/subjects/imported-value/versions/3").await.1,
        json!({ "subject": "imported-value", "version": 3, "id": 100, "schema": user_schema() })
    );
    assert_eq!(
        app.get("/schemas/ids/101").await.1,
        json!({ "schema": user_schema_broken() })
    );

    // Importing the same thing again is a no-op.
    assert_eq!(
        import(user_schema(), 100, Some(3)).await,
        (StatusCode::OK, json!({ "id": 100 }))
    );

    let message = assert_error(
        &import(user_schema_v2(), 100, None).await,
        StatusCode::UNPROCESSABLE_ENTITY,
        42205,
    );
    assert_eq!(
        message,
        "Overwrite new schema with id 100 is not permitted."
    );
    let message = assert_error(
        &import(user_schema(), 102, None).await,
        StatusCode::UNPROCESSABLE_ENTITY,
        42207,
    );
    assert_eq!(
        message,
        "Schema already registered with id 100 instead of input id 102"
    );
    assert_error(
        &import(user_schema_v2(), 102, Some(3)).await,
        StatusCode::UNPROCESSABLE_ENTITY,
        42205,
    );
    // IMPORT takes only schemas with their ids.
    let message = assert_error(
        &app.register("imported-value", &user_schema_v2()).await,
        StatusCode::UNPROCESSABLE_ENTITY,
        42205,
    );
    assert_eq!(message, "Subject imported-value is not in read-write mode");

    // Ids drawn afterwards come after the imported ones; refused imports burnt none.
    assert_eq!(app.register_ok("fresh-value", &user_schema_v2()).await, 102);
    // An imported schema keeps its id everywhere.
    assert_eq!(app.register_ok("fresh-value", &user_schema()).await, 100);
    assert_eq!(
        app.get("/schemas/ids/100/subjects").await.1,
        json!(["fresh-value", "imported-value"])
    );

    app.put_mode("/mode/imported-value", "READWRITE").await;
    assert_error(
        &import(user_schema_v2(), 103, None).await,
        StatusCode::UNPROCESSABLE_ENTITY,
        42205,
    );
}

#[sqlx::test(migrations = "../migrations")]
async fn entering_import_needs_an_empty_subject_unless_forced(pool: PgPool) {
    let app = spawn_app(pool).await;
    app.register_ok("users-value", &user_schema()).await;

    let message = assert_error(
        &app.put_mode("/mode/users-value", "IMPORT").await,
        StatusCode::UNPROCESSABLE_ENTITY,
        42205,
    );
    assert_eq!(message, "Cannot import since found existing subjects");
    assert_error(
        &app.put_mode("/mode", "IMPORT").await,
        StatusCode::UNPROCESSABLE_ENTITY,
        42205,
    );
    assert_eq!(app.get("/mode").await.1, json!({ "mode": "READWRITE" }));
    assert_eq!(
        app.put_mode("/mode/users-value?force=true", "IMPORT").await,
        (StatusCode::OK, json!({ "mode": "IMPORT" }))
    );
    assert_eq!(
        app.post(
            "/subjects/users-value/versions",
            json!({ "schema": user_schema_v2(), "id": 50 })
        )
        .await,
        (StatusCode::OK, json!({ "id": 50 }))
    );
    assert_eq!(
        app.get("/subjects/users-value/versions").await.1,
        json!([1, 2])
    );

    // A subject whose versions are all soft-deleted counts as empty; entering IMPORT clears
    // those versions, so an import can reuse their numbers.
    app.register_ok("old-value", &user_schema()).await;
    app.delete("/subjects/old-value").await;
    assert_eq!(
        app.put_mode("/mode/old-value", "IMPORT").await,
        (StatusCode::OK, json!({ "mode": "IMPORT" }))
    );
    assert_error(
        &app.get("/subjects/old-value/versions?deleted=true").await,
        StatusCode::NOT_FOUND,
        40401,
    );
    assert_eq!(
        app.post(
            "/subjects/old-value/versions",
            json!({ "schema": user_schema(), "id": 1, "version": 1 })
        )
        .await,
        (StatusCode::OK, json!({ "id": 1 }))
    );
}

#[sqlx::test(migrations = "../migrations")]
async fn deleting_a_subject_drops_its_mode_and_level(pool: PgPool) {
    let app = spawn_app(pool).await;
    app.register_ok("users-value", &user_schema()).await;
    app.put_mode("/mode/users-value", "READWRITE").await;
    app.put_config("/config/users-value", "FULL").await;

    assert_eq!(
        app.delete("/subjects/users-value/versions/1").await,
        (StatusCode::OK, json!(1))
    );
    assert_error(
        &app.get("/mode/users-value").await,
        StatusCode::NOT_FOUND,
        40409,
    );
    assert_error(
        &app.get("/config/users-value").await,
        StatusCode::NOT_FOUND,
        40408,
    );
}
