//! `GET /api/v1/openapi.json`: the OpenAPI 3.1 description of the admin address, written by hand
//! in `openapi.json` and built into the binary. It is served without the token (it holds no data,
//! only what any copy of smtpgate serves; SECURITY.md), behind the `Host` check like everything.
//!
//! The tests below hold it equal to what is served: the registry's (`api_routes.rs`) methods and
//! paths are exactly the document's, and every operation is complete. `tests/e2e_openapi.rs` calls
//! every documented operation of a running gate and checks its answers against the schemas.

use axum::http::{HeaderName, header};

/// The document, as served.
pub const DOCUMENT: &str = include_str!("openapi.json");

pub async fn document() -> ([(HeaderName, &'static str); 1], &'static str) {
    ([(header::CONTENT_TYPE, "application/json")], DOCUMENT)
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use serde_json::Value;

    use super::DOCUMENT;

    const METHODS: [&str; 5] = ["get", "put", "post", "delete", "patch"];

    fn doc() -> Value {
        serde_json::from_str(DOCUMENT).expect("openapi.json is JSON")
    }

    /// Every (METHOD, path) the document describes.
    fn documented(doc: &Value) -> BTreeSet<(String, String)> {
        let mut all = BTreeSet::new();
        for (path, item) in doc["paths"].as_object().expect("paths") {
            for (method, _) in item.as_object().expect("path item") {
                assert!(METHODS.contains(&method.as_str()), "{path}: {method} is not a method");
                all.insert((method.to_uppercase(), path.clone()));
            }
        }
        all
    }

    #[test]
    fn documents_exactly_what_is_served() {
        let served: BTreeSet<(String, String)> = super::super::admin::routes()
            .served()
            .iter()
            .map(|(m, p)| (m.to_string(), p.clone()))
            .collect();
        let documented = documented(&doc());
        let undocumented: Vec<_> = served.difference(&documented).collect();
        let not_served: Vec<_> = documented.difference(&served).collect();
        assert!(
            undocumented.is_empty() && not_served.is_empty(),
            "served but not in openapi.json: {undocumented:?}; in openapi.json but not served: {not_served:?}"
        );
        assert!(served.len() >= 30, "{served:?}");
    }

    /// Every `$ref` in `value` names a schema of the document.
    fn refs_resolve(doc: &Value, value: &Value, at: &str) {
        match value {
            Value::Object(map) => {
                if let Some(target) = map.get("$ref") {
                    let name = target
                        .as_str()
                        .and_then(|r| r.strip_prefix("#/components/schemas/"))
                        .unwrap_or_else(|| panic!("{at}: $ref {target} is not a schema of this document"));
                    assert!(doc["components"]["schemas"][name].is_object(), "{at}: no schema {name}");
                }
                for (key, inner) in map {
                    refs_resolve(doc, inner, &format!("{at}/{key}"));
                }
            }
            Value::Array(items) => items.iter().for_each(|v| refs_resolve(doc, v, at)),
            _ => {}
        }
    }

    /// A schema says what it is: a type, a `$ref` or alternatives.
    fn has_schema(content: &Value, at: &str) {
        let media = content.as_object().unwrap_or_else(|| panic!("{at}: no content"));
        assert!(!media.is_empty(), "{at}: no media type");
        for (kind, body) in media {
            let schema = &body["schema"];
            let said = ["type", "$ref", "anyOf"].iter().any(|k| !schema[k].is_null());
            assert!(said, "{at} {kind}: no schema");
        }
    }

    #[test]
    fn every_operation_is_complete() {
        let doc = doc();
        assert_eq!(doc["openapi"], "3.1.0");
        assert_eq!(
            doc["components"]["securitySchemes"]["bearer"]["scheme"], "bearer",
            "the bearer security scheme"
        );
        refs_resolve(&doc, &doc, "#");
        let mut ids = BTreeSet::new();
        for (path, item) in doc["paths"].as_object().unwrap() {
            for (method, op) in item.as_object().unwrap() {
                let at = format!("{method} {path}");
                let id = op["operationId"]
                    .as_str()
                    .unwrap_or_else(|| panic!("{at}: no operationId"));
                assert!(ids.insert(id.to_owned()), "{at}: operationId {id} twice");
                assert!(
                    op["summary"].as_str().is_some_and(|s| !s.is_empty()),
                    "{at}: no summary"
                );
                // Path parameters: each {name} of the path, documented as a string, and no more.
                let in_path: BTreeSet<&str> = path
                    .split('/')
                    .filter_map(|s| s.strip_prefix('{')?.strip_suffix('}'))
                    .collect();
                let mut documented_in_path = BTreeSet::new();
                for param in op["parameters"].as_array().into_iter().flatten() {
                    let name = param["name"]
                        .as_str()
                        .unwrap_or_else(|| panic!("{at}: a parameter without a name"));
                    let place = param["in"].as_str().unwrap_or_default();
                    assert!(["query", "path"].contains(&place), "{at} {name}: in {place}");
                    assert!(!param["schema"]["type"].is_null(), "{at} {name}: no type");
                    if place == "path" {
                        assert_eq!(param["required"], true, "{at} {name}: a path parameter is required");
                        documented_in_path.insert(name);
                    }
                }
                assert_eq!(in_path, documented_in_path, "{at}: path parameters");
                if !op["requestBody"].is_null() {
                    has_schema(&op["requestBody"]["content"], &format!("{at} request body"));
                }
                let responses = op["responses"]
                    .as_object()
                    .unwrap_or_else(|| panic!("{at}: no responses"));
                assert!(responses.keys().any(|s| s.starts_with('2')), "{at}: no 2xx");
                for (status, response) in responses {
                    let at = format!("{at} {status}");
                    assert!(response["description"].is_string(), "{at}: no description");
                    has_schema(&response["content"], &at);
                    if !status.starts_with('2') {
                        let schema = &response["content"]["application/json"]["schema"]["$ref"];
                        assert_eq!(
                            schema, "#/components/schemas/Error",
                            "{at}: errors are the Error schema"
                        );
                    }
                }
                let open = op["security"].as_array().is_some_and(|s| s.is_empty());
                assert_eq!(
                    open,
                    responses.get("401").is_none(),
                    "{at}: 401 unless it needs no token"
                );
            }
        }
    }

    #[test]
    fn open_operations_are_the_guards_open_paths() {
        let doc = doc();
        let mut open = Vec::new();
        for (path, item) in doc["paths"].as_object().unwrap() {
            for (_, op) in item.as_object().unwrap() {
                if op["security"].as_array().is_some_and(|s| s.is_empty()) {
                    open.push(path.as_str());
                }
            }
        }
        open.sort();
        let mut guard = super::super::admin_auth::OPEN_PATHS.to_vec();
        guard.sort();
        assert_eq!(open, guard);
    }
}
