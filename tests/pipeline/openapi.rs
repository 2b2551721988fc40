//! The OpenAPI document (`api/openapi.json`, served at `GET /openapi.json`) against the
//! router it describes. Proves that the document is served without a key as the JSON that
//! was compiled in; that its (method, path) pairs are exactly the router's, read from
//! `api/src/routes.rs` as text, so a route added without being documented (or documented
//! and then removed) fails here; and, over a real socket, that every operation it names is
//! routed (never the fallback's `route not found`, never 405) and asks for a key exactly
//! when the document says it does (`security: []` marks the open ones).
//!
//! How the API answers what it is sent, against the schemas, is `scripts/api-fuzz.sh`'s part
//! (schemathesis against a live API).

use std::collections::BTreeSet;
use std::time::Duration;

use reqwest::Method;
use serde_json::{Value, json};
use uuid::Uuid;

use crate::helpers::*;

const DOCUMENT: &str = include_str!("../../api/openapi.json");
const ROUTES: &str = include_str!("../../api/src/routes.rs");

const METHODS: &[&str] = &[
    "get", "put", "post", "delete", "options", "head", "patch", "trace",
];

type Operation = (String, String);

/// (method, path) of every `.route("<path>", get(..).post(..))` in the router's source. A
/// call may span lines; the methods are the method-router calls in it (`get(`, not a
/// handler's `health::get(`).
fn routed() -> BTreeSet<Operation> {
    let mut operations = BTreeSet::new();
    let mut rest = ROUTES;
    while let Some(at) = rest.find(".route(") {
        rest = &rest[at + ".route(".len()..];
        let mut depth = 1;
        let end = rest
            .char_indices()
            .find_map(|(i, c)| {
                match c {
                    '(' => depth += 1,
                    ')' => depth -= 1,
                    _ => {}
                }
                (depth == 0).then_some(i)
            })
            .expect("a .route( call that closes");
        let call = rest[..end].trim_start();
        let literal = call
            .strip_prefix('"')
            .expect("a route's path is a string literal");
        let (path, router) = literal.split_once('"').expect("a closed path literal");
        let methods: Vec<&str> = METHODS
            .iter()
            .copied()
            .filter(|m| {
                router.match_indices(&format!("{m}(")).any(|(i, _)| {
                    router[..i]
                        .chars()
                        .next_back()
                        .is_none_or(|c| !(c.is_alphanumeric() || c == '_' || c == ':'))
                })
            })
            .collect();
        assert!(!methods.is_empty(), "{path}: no method in {router:?}");
        for method in methods {
            operations.insert((method.to_string(), path.to_string()));
        }
        rest = &rest[end..];
    }
    operations
}

/// (method, path) of every operation of the document.
fn documented(doc: &Value) -> BTreeSet<Operation> {
    doc["paths"]
        .as_object()
        .expect("the document has paths")
        .iter()
        .flat_map(|(path, item)| {
            item.as_object()
                .expect("a path item")
                .keys()
                .filter(|key| METHODS.contains(&key.as_str()))
                .map(move |method| (method.clone(), path.clone()))
        })
        .collect()
}

#[test]
fn the_router_source_is_read_as_it_is_written() {
    let routes = routed();
    // One route per line, one split over lines, and one with two methods.
    for (method, path) in [
        ("get", "/healthz"),
        ("get", "/v1/customers/{id}/statement"),
        ("post", "/v1/users"),
        ("get", "/v1/users"),
    ] {
        assert!(
            routes.contains(&(method.to_string(), path.to_string())),
            "{method} {path} not found in {routes:?}"
        );
    }
    assert!(!routes.contains(&("get".to_string(), "/v1/customers".to_string())));
}

#[test]
fn the_document_names_exactly_the_routes_of_the_router() {
    let doc: Value = serde_json::from_str(DOCUMENT).expect("api/openapi.json is JSON");
    let routes = routed();
    let documented = documented(&doc);
    let undocumented: Vec<_> = routes.difference(&documented).collect();
    let unrouted: Vec<_> = documented.difference(&routes).collect();
    assert!(
        undocumented.is_empty() && unrouted.is_empty(),
        "routes missing from api/openapi.json: {undocumented:?}; \
         operations of api/openapi.json the router does not have: {unrouted:?}"
    );
}

/// The path with a value for each parameter: ids are UUIDs (nothing has them, so a routed
/// request is a 404 naming the resource, not the route), account codes a real one.
fn concrete(path: &str) -> String {
    path.replace("{id}", &Uuid::new_v4().to_string())
        .replace("{code}", "1200")
}

fn is_route_not_found(reply: &Reply) -> bool {
    reply.status == 404 && reply.body["message"] == "route not found"
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_documented_operation_is_routed_and_asks_for_a_key_as_documented() {
    let db = TestDb::new().await;
    let base = serve_api(&db).await;
    let api = Api::new(&base, &org_key(&db, "Documented Society").await);
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()
        .unwrap();

    // Served without a key, as JSON, and what was compiled in.
    let served = http
        .get(format!("{base}/openapi.json"))
        .send()
        .await
        .unwrap();
    assert_eq!(served.status(), 200);
    assert_eq!(
        served.headers()["content-type"].to_str().unwrap(),
        "application/json"
    );
    let doc: Value = served.json().await.unwrap();
    assert_eq!(doc, serde_json::from_str::<Value>(DOCUMENT).unwrap());

    // The route an unknown path reaches is told apart from a routed 404.
    let unknown = api.get("/v1/no-such-resource").await;
    assert!(is_route_not_found(&unknown), "{}", unknown.body);

    let operations = documented(&doc);
    assert!(operations.len() > 30, "{operations:?}");
    for (method, path) in &operations {
        let operation = &doc["paths"][path][method];
        let open = operation["security"] == json!([]);
        let url = format!("{base}{}", concrete(path));
        let verb = Method::from_bytes(method.to_uppercase().as_bytes()).unwrap();
        let request = || {
            let request = http.request(verb.clone(), &url);
            if verb == Method::POST {
                request.json(&json!({}))
            } else {
                request
            }
        };

        let with_key = api.send(request()).await;
        assert!(
            !is_route_not_found(&with_key) && with_key.status != 405,
            "{method} {path} is documented but not routed: {} {}",
            with_key.status,
            with_key.body
        );

        let without_key = request().send().await.unwrap().status().as_u16();
        if open {
            assert_ne!(
                without_key, 401,
                "{method} {path} is documented as open (security: []) but asks for a key"
            );
        } else {
            assert_eq!(
                without_key, 401,
                "{method} {path} is documented as needing a key but answers without one"
            );
        }
    }
    db.drop_db().await;
}
