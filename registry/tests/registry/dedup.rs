//! When two schema texts are the same schema: registration without `normalize` ignores only
//! form (whitespace, attribute order, name qualification), with `normalize=true` docs too.

use axum::http::StatusCode;
use dhanman_registry::ParsedSchema;
use serde_json::json;
use sqlx::PgPool;

use crate::server::spawn_app;
use crate::{assert_error, user_schema, user_schema_documented, user_schema_reformatted};

const WITH_DEFAULT: &str = r#"{"type":"record","name":"Invoice","namespace":"dhanman.test","fields":[{"name":"amount","type":"long","default":0}]}"#;

#[sqlx::test(migrations = "../migrations")]
async fn form_variants_are_one_schema(pool: PgPool) {
    let app = spawn_app(pool).await;
    assert_eq!(app.register_ok("users-value", &user_schema()).await, 1);

    let fully_qualified = r#"{"fields":[{"type":{"type":"long"},"name":"id","order":"ascending"},{"name":"name","type":"string"}],"name":"dhanman.test.User","type":"record"}"#;
    for variant in [user_schema_reformatted(), fully_qualified.to_owned()] {
        assert_eq!(
            app.register("users-value", &variant).await,
            (StatusCode::OK, json!({ "id": 1 })),
            "{variant}"
        );
        // Another subject gets the same global id.
        assert_eq!(app.register_ok("other-value", &variant).await, 1);
    }
    assert_eq!(
        app.get("/subjects/users-value/versions").await.1,
        json!([1])
    );
    assert_eq!(
        app.get("/subjects/other-value/versions").await.1,
        json!([1])
    );
    // Clients get the text as first registered.
    assert_eq!(
        app.get("/schemas/ids/1").await.1,
        json!({ "schema": user_schema() })
    );
}

#[sqlx::test(migrations = "../migrations")]
async fn defaults_aliases_logical_types_order_and_docs_make_new_schemas(pool: PgPool) {
    let app = spawn_app(pool).await;
    // These evolutions are all compatible, but keep the test independent of the checker.
    app.put_config("/config/invoices-value", "NONE").await;
    assert_eq!(app.register_ok("invoices-value", WITH_DEFAULT).await, 1);

    let variants = [
        r#"{"type":"record","name":"Invoice","namespace":"dhanman.test","fields":[{"name":"amount","type":"long","default":100}]}"#,
        r#"{"type":"record","name":"Invoice","namespace":"dhanman.test","fields":[{"name":"amount","type":"long","default":0,"aliases":["total"]}]}"#,
        r#"{"type":"record","name":"Invoice","namespace":"dhanman.test","aliases":["Bill"],"fields":[{"name":"amount","type":"long","default":0}]}"#,
        r#"{"type":"record","name":"Invoice","namespace":"dhanman.test","fields":[{"name":"amount","type":{"type":"long","logicalType":"timestamp-millis"},"default":0}]}"#,
        r#"{"type":"record","name":"Invoice","namespace":"dhanman.test","fields":[{"name":"amount","type":"long","default":0,"order":"descending"}]}"#,
        r#"{"type":"record","name":"Invoice","namespace":"dhanman.test","doc":"a bill","fields":[{"name":"amount","type":"long","default":0}]}"#,
    ];
    for (i, variant) in variants.iter().enumerate() {
        let expected = i64::try_from(i).unwrap() + 2;
        assert_eq!(
            app.register_ok("invoices-value", variant).await,
            expected,
            "{variant}"
        );
        // And each stays itself: registering it again is a no-op.
        assert_eq!(app.register_ok("invoices-value", variant).await, expected);
        let (status, found) = app
            .post("/subjects/invoices-value", json!({ "schema": variant }))
            .await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(found["id"], expected);
        assert_eq!(found["version"], expected);
    }
    assert_eq!(
        app.get("/subjects/invoices-value/versions").await.1,
        json!([1, 2, 3, 4, 5, 6, 7])
    );
}

#[sqlx::test(migrations = "../migrations")]
async fn normalize_ignores_docs_on_lookup_and_registration(pool: PgPool) {
    let app = spawn_app(pool).await;
    assert_eq!(app.register_ok("users-value", &user_schema()).await, 1);

    let documented = json!({ "schema": user_schema_documented() });
    assert_error(
        &app.post("/subjects/users-value", documented.clone()).await,
        StatusCode::NOT_FOUND,
        40403,
    );
    let (status, found) = app
        .post("/subjects/users-value?normalize=true", documented.clone())
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        found,
        json!({ "subject": "users-value", "version": 1, "id": 1, "schema": user_schema() })
    );

    assert_eq!(
        app.post(
            "/subjects/users-value/versions?normalize=true",
            documented.clone()
        )
        .await,
        (StatusCode::OK, json!({ "id": 1 }))
    );
    assert_eq!(
        app.get("/subjects/users-value/versions").await.1,
        json!([1])
    );

    // Without normalize the docs make it a schema of its own.
    assert_eq!(
        app.post("/subjects/users-value/versions", documented).await,
        (StatusCode::OK, json!({ "id": 2 }))
    );
    assert_eq!(
        app.get("/subjects/users-value/versions").await.1,
        json!([1, 2])
    );
}

#[sqlx::test(migrations = "../migrations")]
async fn normalize_stores_the_normalized_form(pool: PgPool) {
    let app = spawn_app(pool).await;
    let normalized = r#"{"name":"dhanman.test.User","type":"record","fields":[{"name":"id","type":"long"},{"name":"name","type":"string"}]}"#;

    assert_eq!(
        app.post(
            "/subjects/users-value/versions?normalize=true",
            json!({ "schema": user_schema_documented() })
        )
        .await,
        (StatusCode::OK, json!({ "id": 1 }))
    );
    assert_eq!(
        app.get("/schemas/ids/1").await.1,
        json!({ "schema": normalized })
    );
    // The normalized text is that schema, with or without normalize, in any subject.
    assert_eq!(app.register_ok("users-value", normalized).await, 1);
    assert_eq!(app.register_ok("other-value", normalized).await, 1);
    assert_eq!(
        app.post(
            "/subjects/third-value/versions?normalize=true",
            json!({ "schema": user_schema_reformatted() })
        )
        .await,
        (StatusCode::OK, json!({ "id": 1 }))
    );
    assert_eq!(
        app.get("/subjects/users-value/versions").await.1,
        json!([1])
    );
}

/// Rows written before the identity form existed hold the sha256 of the parsing canonical form
/// and no normalized fingerprint; the registry rewrites them before it matches anything.
#[sqlx::test(migrations = "../migrations")]
async fn fingerprints_stored_before_the_identity_form_are_upgraded(pool: PgPool) {
    let (first, second) = (user_schema(), WITH_DEFAULT.to_owned());
    store_as_before(
        &pool,
        "legacy-value",
        &[&first, &second],
        "sha256(convert_to($2, 'UTF8'))",
        "NULL",
    )
    .await;

    let app = spawn_app(pool.clone()).await;
    assert_eq!(
        app.register("legacy-value", &user_schema_reformatted())
            .await,
        (StatusCode::OK, json!({ "id": 1 }))
    );
    assert_eq!(app.register_ok("elsewhere-value", WITH_DEFAULT).await, 2);
    // The canonical form ignored the default, the identity form doesn't.
    app.put_config("/config/legacy-value", "NONE").await;
    let other_default = WITH_DEFAULT.replace(r#""default":0"#, r#""default":7"#);
    assert_eq!(app.register_ok("legacy-value", &other_default).await, 3);
    assert_eq!(
        app.get("/subjects/legacy-value/versions").await.1,
        json!([1, 2, 3])
    );

    let pending: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM schema_registry_schemas WHERE normalized_fingerprint IS NULL",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!(pending, 0);
}

/// Rows stored before the forms last changed (a `fields` list on a fixed, aliases that are not
/// all names) hold the old forms' fingerprints; the migration that marks them has the
/// registry recompute them, so the same text registered again is found, not stored twice.
#[sqlx::test(migrations = "../migrations")]
async fn fingerprints_of_forms_before_their_last_change_are_recomputed(pool: PgPool) {
    const FIXED_WITH_FIELDS: &str = r#"{"type":"record","name":"Outer","namespace":"n","fields":[{"name":"inner","type":{"type":"fixed","name":"Inner","size":4,"fields":[{"name":"e","type":{"type":"enum","name":"E","symbols":["X"]}}]}}]}"#;
    const ALIASES_NOT_ALL_NAMES: &str = r#"{"type":"enum","name":"Status","namespace":"a.b","symbols":["OPEN"],"aliases":[3333,"State"]}"#;
    // The rows as the forms before left them: other fingerprints for the same texts.
    store_as_before(
        &pool,
        "forms-value",
        &[FIXED_WITH_FIELDS, ALIASES_NOT_ALL_NAMES],
        "sha256(convert_to('old form ' || $1, 'UTF8'))",
        "sha256(convert_to('old normalized form ' || $1, 'UTF8'))",
    )
    .await;
    sqlx::raw_sql(include_str!(
        "../../../migrations/20261205000068_schema_forms_recomputed.sql"
    ))
    .execute(&pool)
    .await
    .unwrap();

    let app = spawn_app(pool.clone()).await;
    app.put_config("/config/forms-value", "NONE").await;
    assert_eq!(app.register_ok("forms-value", FIXED_WITH_FIELDS).await, 1);
    assert_eq!(
        app.register_ok("elsewhere-value", ALIASES_NOT_ALL_NAMES)
            .await,
        2
    );
    assert_eq!(
        app.get("/subjects/forms-value/versions").await.1,
        json!([1, 2])
    );
    for (id, text) in [(1, FIXED_WITH_FIELDS), (2, ALIASES_NOT_ALL_NAMES)] {
        let stored: Vec<u8> =
            sqlx::query_scalar("SELECT fingerprint FROM schema_registry_schemas WHERE id = $1")
                .bind(id)
                .fetch_one(&pool)
                .await
                .unwrap();
        assert_eq!(stored, ParsedSchema::parse(text).unwrap().fingerprint);
    }
}

/// Stores `texts` as an earlier registry left them: ids and versions of `subject` 1, 2, ...
/// in order, with `fingerprint` and `normalized` (SQL of `$1`, the id, and `$2`, the
/// parsing canonical form) as their fingerprints, and the id sequence past them.
async fn store_as_before(
    pool: &PgPool,
    subject: &str,
    texts: &[&str],
    fingerprint: &str,
    normalized: &str,
) {
    for (id, text) in (1..).zip(texts) {
        sqlx::query(sqlx::AssertSqlSafe(format!(
            "INSERT INTO schema_registry_schemas
                    (id, fingerprint, normalized_fingerprint, canonical, schema)
             OVERRIDING SYSTEM VALUE
             VALUES ($1::int, {fingerprint}, {normalized}, $2, $3)"
        )))
        .bind(id)
        .bind(ParsedSchema::parse(text).unwrap().canonical)
        .bind(*text)
        .execute(pool)
        .await
        .unwrap();
        sqlx::query(
            "INSERT INTO schema_registry_subject_versions (subject, version, schema_id)
             VALUES ($1, $2, $2)",
        )
        .bind(subject)
        .bind(id)
        .execute(pool)
        .await
        .unwrap();
    }
    sqlx::query("SELECT setval(pg_get_serial_sequence('schema_registry_schemas', 'id'), $1)")
        .bind(texts.len() as i64)
        .execute(pool)
        .await
        .unwrap();
}
