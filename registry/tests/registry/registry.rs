use dhanman_registry::{Error, Registry};
use sqlx::PgPool;

use crate::{user_schema, user_schema_reformatted, user_schema_v2};

#[sqlx::test(migrations = "../migrations")]
async fn library_api(pool: PgPool) {
    let registry = Registry::new(pool);
    assert_eq!(
        registry
            .register("users-value", &user_schema())
            .await
            .unwrap(),
        (1, 1)
    );
    assert_eq!(
        registry
            .register("users-value", &user_schema_reformatted())
            .await
            .unwrap(),
        (1, 1)
    );
    assert_eq!(
        registry
            .register("users-value", &user_schema_v2())
            .await
            .unwrap(),
        (2, 2)
    );
    assert_eq!(
        registry
            .register("users-key", &user_schema_v2())
            .await
            .unwrap(),
        (2, 1)
    );

    assert_eq!(registry.schema_by_id(1).await.unwrap(), Some(user_schema()));
    assert_eq!(registry.schema_by_id(3).await.unwrap(), None);

    let err = registry.register("users-value", "{").await.unwrap_err();
    assert!(matches!(err, Error::InvalidSchema(_)), "{err:?}");
    assert_eq!(err.error_code(), 42201);
}

/// Opens every connection the pool allows up front, so that racing tasks don't get serialized
/// by waiting for connections to be established one after another.
async fn warm_up(pool: &PgPool) {
    let mut connections = Vec::new();
    for _ in 0..pool.options().get_max_connections() {
        connections.push(pool.acquire().await.unwrap());
    }
}

fn record(name: &str) -> String {
    format!(r#"{{"type":"record","name":"{name}","fields":[{{"name":"n","type":"int"}}]}}"#)
}

/// Runs 8 registrations at once, subject chosen per task, and returns their results.
async fn race(
    registry: &Registry,
    schema: &str,
    subject: impl Fn(usize) -> String,
) -> Vec<(i32, i32)> {
    let tasks: Vec<_> = (0..8)
        .map(|i| {
            let registry = registry.clone();
            let subject = subject(i);
            let schema = schema.to_owned();
            tokio::spawn(async move { registry.register(&subject, &schema).await })
        })
        .collect();
    let mut results = Vec::new();
    for task in tasks {
        results.push(task.await.unwrap().unwrap());
    }
    results
}

#[sqlx::test(migrations = "../migrations")]
async fn concurrent_registrations_yield_one_id(pool: PgPool) {
    let registry = Registry::new(pool.clone());
    warm_up(&pool).await;

    // Several rounds, because a single one can happen to run without overlap.
    let mut next_id = 1;
    for round in 0..5 {
        let subject = format!("same-{round}");
        let results = race(&registry, &record(&format!("Same{round}")), |_| {
            subject.clone()
        })
        .await;
        assert_eq!(
            results,
            vec![(next_id, 1); 8],
            "same subject, round {round}"
        );
        next_id += 1;

        let results = race(&registry, &record(&format!("Spread{round}")), |i| {
            format!("spread-{round}-{i}")
        })
        .await;
        assert_eq!(
            results,
            vec![(next_id, 1); 8],
            "different subjects, round {round}"
        );
        next_id += 1;
    }

    let versions: i64 = sqlx::query_scalar("SELECT count(*) FROM schema_registry_subject_versions")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(versions, 5 * (1 + 8));
    // Ids are dense: no sequence value was burnt by a lost race.
    let max_id: i32 = sqlx::query_scalar("SELECT max(id) FROM schema_registry_schemas")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(max_id, 10);
}
