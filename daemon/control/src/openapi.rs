//! `openapi.yaml`, generated from the route table and the `tether-api` types: every path,
//! method, role list, parameter, request body, answer and every status a route can return.
//! A test fails when the committed file differs from what this module generates; regenerate it
//! with `TETHER_BLESS=1 cargo test -p tether-control openapi`.

use serde_json::{Map, Value, json};
use tether_api::{Encoding, Endpoint, ErrorBody};
use utoipa::openapi::RefOr;
use utoipa::openapi::schema::Schema;
use utoipa::{PartialSchema, ToSchema};

use crate::routes::{RouteInfo, routes};

/// The schemas one route refers to.
pub(crate) struct RouteSchemas {
    request_name: String,
    request: RefOr<Schema>,
    response_name: String,
    response: RefOr<Schema>,
    components: Vec<(String, RefOr<Schema>)>,
}

/// The schemas of endpoint `E` (monomorphised into the route table as a plain `fn`).
pub(crate) fn route_schemas<E: Endpoint>() -> RouteSchemas {
    let mut components = Vec::new();
    <E::Request as ToSchema>::schemas(&mut components);
    <E::Response as ToSchema>::schemas(&mut components);
    RouteSchemas {
        request_name: <E::Request as ToSchema>::name().into_owned(),
        request: <E::Request as PartialSchema>::schema(),
        response_name: <E::Response as ToSchema>::name().into_owned(),
        response: <E::Response as PartialSchema>::schema(),
        components,
    }
}

fn reference(name: &str) -> Value {
    json!({"$ref": format!("#/components/schemas/{name}")})
}

/// A schema for a component: plain types (`String`) inline, named ones by reference.
fn schema_or_ref(name: &str, schema: &RefOr<Schema>, components: &mut Map<String, Value>) -> Value {
    let value = serde_json::to_value(schema).unwrap_or(Value::Null);
    let is_named_object = matches!(schema, RefOr::T(Schema::Object(o)) if !o.properties.is_empty())
        || matches!(schema, RefOr::T(Schema::Object(o)) if o.enum_values.is_some())
        || matches!(
            schema,
            RefOr::T(Schema::OneOf(_) | Schema::AllOf(_) | Schema::AnyOf(_))
        );
    if is_named_object && name != "String" {
        components.insert(name.to_owned(), value);
        reference(name)
    } else {
        value
    }
}

fn status_text(code: u16) -> &'static str {
    match code {
        101 => {
            "switching protocols: the connection now carries the protocol named in the `Upgrade` header"
        }
        200 => "success",
        400 => {
            "bad input: malformed JSON, unknown field, bad query parameter or value (`invalid_json`, `bad_query`, or the route's own code)"
        }
        403 => "the caller has no role, or a role that may not call this route (`forbidden`)",
        404 => "no such host, secret or record (`no_such_host`, `secret_not_found`)",
        408 => "the request body did not arrive within control.idle_timeout_secs (`timeout`)",
        409 => {
            "not possible in this state: a target asked for hub-only work, a name taken, nothing to reload"
        }
        413 => "the request body is over the 1 MiB limit (`body_too_large`)",
        426 => {
            "the request lacks `Connection: upgrade` and the route's `Upgrade` token (`upgrade_required`)"
        }
        422 => {
            "the new configuration, policy or plugin set is invalid; the old one stays (`invalid_config`, `invalid_policy`, `invalid_plugins`)"
        }
        500 => "an internal failure (`internal`, `audit_error`, `vault_error`, ...)",
        503 => {
            "a subsystem is missing or its audit record could not be written, so nothing was done (`audit_unavailable`, `not_ready`, ...)"
        }
        _ => "see the error body",
    }
}

fn operation(r: &RouteInfo, components: &mut Map<String, Value>) -> Value {
    let s = (r.schemas)();
    for (name, schema) in &s.components {
        components.insert(
            name.clone(),
            serde_json::to_value(schema).unwrap_or(Value::Null),
        );
    }
    let path_params = tether_api::path_params(r.path);
    let mut parameters: Vec<Value> = path_params
        .iter()
        .map(|p| json!({"name": p, "in": "path", "required": true, "schema": {"type": "string"}}))
        .collect();
    let mut op = Map::new();
    op.insert("summary".into(), json!(r.summary));
    op.insert(
        "operationId".into(),
        json!(format!(
            "{}{}",
            r.method.as_str().to_lowercase(),
            r.path.replace(['/', '{', '}', '-'], "_")
        )),
    );
    let roles: Vec<&str> = r.roles.iter().map(|r| r.as_str()).collect();
    op.insert("x-roles".into(), json!(roles));
    let request = serde_json::to_value(&s.request).unwrap_or(Value::Null);
    let props = request["properties"]
        .as_object()
        .cloned()
        .unwrap_or_default();
    let required: Vec<String> = request["required"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|v| v.as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default();
    let body_fields = props.keys().any(|k| !path_params.contains(&k.as_str()));
    if r.method == hyper::Method::GET || r.method == hyper::Method::DELETE {
        for (name, schema) in &props {
            if path_params.contains(&name.as_str()) {
                continue;
            }
            let mut p = json!({"name": name, "in": "query", "required": required.contains(name), "schema": schema});
            if schema["type"] == "array"
                || schema["type"]
                    .as_array()
                    .is_some_and(|t| t.contains(&json!("array")))
            {
                p["explode"] = json!(true);
            }
            parameters.push(p);
        }
    } else if r.raw_body && r.streamed_body {
        op.insert(
            "requestBody".into(),
            json!({"required": true, "description": "streamed as it arrives; not bound by the control API's 1 MiB body limit, but by the hub's [files] max_file_size (default 100 MiB), checked while streaming (413)", "content": {"application/octet-stream": {"schema": {"type": "string", "format": "binary"}}}}),
        );
        let mut params = Vec::new();
        for (name, schema) in &props {
            if !path_params.contains(&name.as_str()) {
                params.push(json!({"name": name, "in": "query", "required": required.contains(name), "schema": schema}));
            }
        }
        parameters.extend(params);
    } else if r.raw_body {
        op.insert(
            "requestBody".into(),
            json!({"required": true, "content": {"application/octet-stream": {"schema": {"type": "string", "format": "binary"}}}}),
        );
    } else if body_fields {
        components.insert(s.request_name.clone(), request.clone());
        op.insert(
            "requestBody".into(),
            json!({"required": false, "content": {"application/json": {"schema": reference(&s.request_name)}}}),
        );
    }
    if !parameters.is_empty() {
        op.insert("parameters".into(), Value::Array(parameters));
    }
    let answer = schema_or_ref(&s.response_name, &s.response, components);
    let content = match r.encoding {
        Encoding::Json => json!({"application/json": {"schema": answer}}),
        Encoding::NdJson => {
            json!({"application/x-ndjson": {"schema": {"type": "string", "description": "one JSON document per line, each as x-item-schema"}, "x-item-schema": answer}})
        }
        Encoding::Text => json!({"text/plain": {"schema": {"type": "string"}}}),
        Encoding::Upgrade(_) => json!({}),
    };
    let mut responses = Map::new();
    for code in &r.statuses {
        let resp = if let (101, Encoding::Upgrade(protocol)) = (*code, r.encoding) {
            json!({"description": status_text(101), "headers": {"Upgrade": {"required": true, "schema": {"type": "string", "enum": [protocol]}}}})
        } else if *code == 200 {
            json!({"description": status_text(200), "content": content})
        } else {
            json!({"description": status_text(*code), "content": {"application/json": {"schema": reference("ErrorBody")}}})
        };
        responses.insert(code.to_string(), resp);
    }
    op.insert("responses".into(), Value::Object(responses));
    Value::Object(op)
}

/// The whole document as a JSON value (paths in table order, components sorted by name).
pub fn document_value() -> Value {
    let mut components = Map::new();
    let mut errors = Vec::new();
    <ErrorBody as ToSchema>::schemas(&mut errors);
    for (name, schema) in errors {
        components.insert(name, serde_json::to_value(schema).unwrap_or(Value::Null));
    }
    components.insert(
        "ErrorBody".into(),
        serde_json::to_value(<ErrorBody as PartialSchema>::schema()).unwrap_or(Value::Null),
    );
    let mut paths = Map::new();
    for r in routes() {
        let op = operation(r, &mut components);
        let item = paths
            .entry(r.path.to_owned())
            .or_insert_with(|| Value::Object(Map::new()));
        if let Value::Object(m) = item {
            m.insert(r.method.as_str().to_lowercase(), op);
        }
    }
    let components: std::collections::BTreeMap<String, Value> = components.into_iter().collect();
    json!({
        "openapi": "3.1.0",
        "info": {
            "title": "tetherd control API",
            "version": tether_model::VERSION,
            "description": "HTTP/1.1 + JSON over the daemon's Unix socket (/run/tether/tetherd.sock, or $XDG_RUNTIME_DIR/tether/tetherd.sock for a user daemon). The caller is identified by SO_PEERCRED and mapped to a role by [control.roles]; x-roles lists the roles each operation admits. Errors are {\"error\":{\"code\",\"message\",\"hint\"}}. Bodies are limited to 1 MiB. Generated from daemon/api and the route table: do not edit by hand.",
        },
        "paths": paths,
        "components": {"schemas": components},
    })
}

/// The document as YAML, as committed in `daemon/control/openapi.yaml`.
pub fn document_yaml() -> Result<String, crate::ControlError> {
    let value = document_value();
    let api: utoipa::openapi::OpenApi = serde_json::from_value(value)
        .map_err(|e| crate::ControlError::OpenApi(format!("not an OpenAPI document: {e}")))?;
    api.to_yaml()
        .map_err(|e| crate::ControlError::OpenApi(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The committed openapi.yaml is exactly what the code generates. To update it after
    /// changing a route or an api type: `TETHER_BLESS=1 cargo test -p tether-control openapi`.
    #[test]
    fn openapi_yaml_is_generated_from_the_code() {
        let generated = document_yaml().expect("document");
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("openapi.yaml");
        if std::env::var_os("TETHER_BLESS").is_some() {
            std::fs::write(&path, &generated).expect("write openapi.yaml");
        }
        let committed = std::fs::read_to_string(&path).unwrap_or_default();
        assert!(
            committed == generated,
            "daemon/control/openapi.yaml differs from the code; regenerate it with \
             TETHER_BLESS=1 cargo test -p tether-control openapi and commit it"
        );
    }

    /// Every route and every status it can return is in the document.
    #[test]
    fn every_route_and_status_is_documented() {
        let doc = document_value();
        for r in routes() {
            let op = &doc["paths"][r.path][r.method.as_str().to_lowercase()];
            assert!(op.is_object(), "{} {} missing", r.method, r.path);
            for s in &r.statuses {
                assert!(
                    op["responses"][s.to_string()].is_object(),
                    "{} {} does not document {s}",
                    r.method,
                    r.path
                );
            }
        }
        // Every referenced schema exists.
        let text = doc.to_string();
        for piece in text.split("#/components/schemas/").skip(1) {
            let name: String = piece.chars().take_while(|c| *c != '"').collect();
            assert!(
                doc["components"]["schemas"][&name].is_object(),
                "schema {name} missing"
            );
        }
    }
}
