//! The registry as a real Confluent client sees it: over TCP, nested the way the API mounts it.

use apache_avro::types::Value;
use axum::Router;
use schema_registry_converter::async_impl::avro::{AvroDecoder, AvroEncoder};
use schema_registry_converter::async_impl::schema_registry::{
    SrSettings, get_all_subjects, get_schema_by_id, get_schema_by_subject_and_version, post_schema,
};
use schema_registry_converter::schema_registry_common::{
    SchemaType, SubjectNameStrategy, SuppliedSchema,
};
use sqlx::PgPool;
use tokio::net::TcpListener;

use crate::{user_schema, user_schema_v2};

/// Serves the registry at `/schema-registry` on an ephemeral port; returns the base url.
async fn serve(pool: PgPool) -> String {
    let app = Router::new().nest("/schema-registry", crate::authorized_router(pool).await);
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    format!("http://{addr}/schema-registry")
}

fn settings(url: String) -> SrSettings {
    SrSettings::new_builder(url).no_proxy().build().unwrap()
}

#[sqlx::test(migrations = "../migrations")]
async fn converter_encodes_and_decodes_through_the_registry(pool: PgPool) {
    let sr = settings(serve(pool).await);

    let strategy = SubjectNameStrategy::TopicRecordNameStrategyWithSchema(
        "users".to_owned(),
        SuppliedSchema::new(
            Some("dhanman.test.User".to_owned()),
            SchemaType::Avro,
            user_schema(),
        ),
    );
    let encoder = AvroEncoder::new(sr.clone());
    let bytes = encoder
        .encode(
            vec![
                ("id", Value::Long(42)),
                ("name", Value::String("Asha".to_owned())),
            ],
            strategy,
        )
        .await
        .unwrap();
    // Confluent wire format: magic byte 0, then the big-endian global id.
    assert_eq!(bytes[..5], [0, 0, 0, 0, 1]);

    let decoded = AvroDecoder::new(sr.clone())
        .decode(Some(&bytes))
        .await
        .unwrap();
    assert_eq!(
        decoded.value,
        Value::Record(vec![
            ("id".to_owned(), Value::Long(42)),
            ("name".to_owned(), Value::String("Asha".to_owned())),
        ])
    );

    let registered = get_schema_by_id(1, &sr).await.unwrap();
    assert_eq!(registered.schema, user_schema());
    assert_eq!(registered.schema_type, SchemaType::Avro);

    let posted = post_schema(
        &sr,
        "users-dhanman.test.User".to_owned(),
        SuppliedSchema::new(None, SchemaType::Avro, user_schema_v2()),
    )
    .await
    .unwrap();
    assert_eq!(posted.id, 2);

    let latest = get_schema_by_subject_and_version(&sr, "users-dhanman.test.User", None)
        .await
        .unwrap();
    assert_eq!((latest.id, latest.version), (2, Some(2)));
    assert_eq!(latest.schema, user_schema_v2());

    assert_eq!(
        get_all_subjects(&sr).await.unwrap(),
        vec!["users-dhanman.test.User".to_owned()]
    );
}

#[sqlx::test(migrations = "../migrations")]
async fn converter_sees_confluent_errors(pool: PgPool) {
    let sr = settings(serve(pool).await);
    let err = get_schema_by_id(7, &sr).await.unwrap_err();
    assert!(err.error.contains("404"), "{err:?}");
    assert!(format!("{err:?}").contains("40403"), "{err:?}");
}
