//! `GET /openapi.json`: the OpenAPI 3.0 description of this API. It is written by hand
//! (`api/openapi.json`, next to this crate's `Cargo.toml`) and compiled into the binary,
//! since deriving it would mean annotating every handler; `tests/pipeline/openapi.rs` keeps
//! it and the router in step, and `scripts/api-fuzz.sh` holds a live API to it.

use axum::http::header::{CACHE_CONTROL, CONTENT_TYPE};
use axum::response::IntoResponse;

const DOCUMENT: &str = include_str!("../openapi.json");

/// Unauthenticated, like `/healthz`: it describes the API, and names no tenant's data.
pub async fn document() -> impl IntoResponse {
    (
        [
            (CONTENT_TYPE, "application/json"),
            // It changes with the binary.
            (CACHE_CONTROL, "no-cache"),
        ],
        DOCUMENT,
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::Value;

    fn document() -> Value {
        serde_json::from_str(DOCUMENT).expect("api/openapi.json is JSON")
    }

    /// Every `$ref` in `value`, as its JSON pointer into the document.
    fn refs<'a>(value: &'a Value, out: &mut Vec<&'a str>) {
        match value {
            Value::Object(fields) => {
                if let Some(Value::String(target)) = fields.get("$ref") {
                    out.push(target);
                }
                fields.values().for_each(|v| refs(v, out));
            }
            Value::Array(items) => items.iter().for_each(|v| refs(v, out)),
            _ => {}
        }
    }

    #[test]
    fn the_document_is_openapi_3_0_and_every_reference_resolves() {
        let doc = document();
        assert!(
            doc["openapi"]
                .as_str()
                .is_some_and(|v| v.starts_with("3.0.")),
            "{}",
            doc["openapi"]
        );
        let mut targets = Vec::new();
        refs(&doc, &mut targets);
        assert!(!targets.is_empty());
        for target in targets {
            let pointer = target
                .strip_prefix('#')
                .unwrap_or_else(|| panic!("{target}: only local references"));
            assert!(doc.pointer(pointer).is_some(), "{target} names nothing");
        }
    }

    #[test]
    fn operation_ids_are_unique_and_every_refusal_is_the_error_shape() {
        let doc = document();
        let mut ids = std::collections::BTreeSet::new();
        for (path, item) in doc["paths"].as_object().expect("paths") {
            for (method, operation) in item.as_object().expect("path item") {
                let id = operation["operationId"]
                    .as_str()
                    .unwrap_or_else(|| panic!("{method} {path} has no operationId"));
                assert!(ids.insert(id), "operationId {id} twice");
                let responses = operation["responses"].as_object().expect("responses");
                assert!(
                    responses.keys().any(|code| code.starts_with('2')),
                    "{method} {path} documents no success"
                );
            }
        }
        // Every shared refusal but the timeout (which has no body) is an `Error`.
        for (name, response) in doc["components"]["responses"].as_object().unwrap() {
            let schema = &response["content"]["application/json"]["schema"]["$ref"];
            assert!(
                name == "Timeout" || schema == "#/components/schemas/Error",
                "{name}: {response}"
            );
        }
    }
}
