//! [`Endpoint`]: one route's method, path and types, and the one way a request travels.
//!
//! A request type is one serde struct holding everything the caller says. On the wire, the
//! fields named in the path template (`/v1/hosts/{name}`) go into the path, percent-encoded; for
//! `GET` and `DELETE` the remaining fields become the query string (a list repeats its key); for
//! `POST` and `PUT` they form the JSON body. [`encode`] (client) and [`decode`] (server) are
//! inverse, so the two sides cannot disagree about where a field lives.

use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::{Map, Value};

/// An HTTP method the control API uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Method {
    /// Read; inputs in the query string.
    Get,
    /// Act; inputs in a JSON body.
    Post,
    /// Store; inputs in the body.
    Put,
    /// Remove; inputs in the path and query string.
    Delete,
}

impl Method {
    /// The method's name (`GET`, ...).
    pub fn as_str(self) -> &'static str {
        match self {
            Method::Get => "GET",
            Method::Post => "POST",
            Method::Put => "PUT",
            Method::Delete => "DELETE",
        }
    }

    /// Whether inputs other than path parameters travel in the query string.
    pub fn uses_query(self) -> bool {
        matches!(self, Method::Get | Method::Delete)
    }
}

/// How a successful answer is encoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Encoding {
    /// One JSON document (`application/json`) of type [`Endpoint::Response`].
    Json,
    /// A stream of JSON lines (`application/x-ndjson`), each an [`Endpoint::Response`].
    NdJson,
    /// Plain text (`text/plain`); [`Endpoint::Response`] is `String`.
    Text,
    /// The connection switches protocols: the server answers `101 Switching Protocols` with
    /// `Upgrade: <the protocol named here>` and both sides then speak that protocol on the
    /// socket (SSH for `tether proxy`, the [`crate::frame`] protocol for `tether ssh`).
    /// [`Endpoint::Response`] is unused ([`crate::Empty`]); refusals are JSON errors as usual.
    Upgrade(&'static str),
}

impl Encoding {
    /// The `Content-Type` of an answer in this encoding.
    pub fn content_type(self) -> &'static str {
        match self {
            Encoding::Json => "application/json",
            Encoding::NdJson => "application/x-ndjson",
            Encoding::Text => "text/plain; charset=utf-8",
            Encoding::Upgrade(_) => "application/octet-stream",
        }
    }
}

/// One control API route: the contract shared by server and client.
pub trait Endpoint {
    /// The HTTP method.
    const METHOD: Method;
    /// The path template; `{field}` segments are taken from the request's field of that name.
    const PATH: &'static str;
    /// One line for the OpenAPI document and `tether` help.
    const SUMMARY: &'static str;
    /// How a successful answer is encoded.
    const RESPONSE: Encoding = Encoding::Json;
    /// The body is raw bytes (`application/octet-stream`, e.g. a secret's value) instead of
    /// JSON; the request type then carries only path and query fields.
    const RAW_BODY: bool = false;
    /// The raw body is streamed to the handler as it arrives, exempt from the control API's
    /// 1 MiB body limit; the route bounds it itself (`POST /v1/fs/put`: `max_file_size`).
    /// Implies [`Endpoint::RAW_BODY`].
    const STREAMED_BODY: bool = false;
    /// Everything the caller says.
    type Request: Serialize + DeserializeOwned + utoipa::ToSchema + Send + 'static;
    /// What a successful call returns (per line for [`Encoding::NdJson`]).
    type Response: Serialize + DeserializeOwned + utoipa::ToSchema + Send + 'static;
}

/// A request ready to send: path with query string, and the JSON body if any.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Encoded {
    /// `/v1/...?...`
    pub path_and_query: String,
    /// The JSON body (`POST`/`PUT` of a non-raw endpoint).
    pub body: Option<Vec<u8>>,
}

/// A request value that cannot be put on the wire (a bug in the caller, not bad user input).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum EncodeError {
    /// The request did not serialize to a JSON object.
    #[error("the request for {path} is not a JSON object: {reason}")]
    NotAnObject {
        /// The endpoint's path template.
        path: &'static str,
        /// What serde said, or what the value was.
        reason: String,
    },
    /// A path parameter is missing or not a scalar.
    #[error("the request for {path} has no usable value for the path parameter {param:?}")]
    MissingParam {
        /// The endpoint's path template.
        path: &'static str,
        /// The parameter.
        param: String,
    },
    /// A query field holds a nested object.
    #[error("the request field {field:?} for {path} cannot go into a query string (nested value)")]
    NestedQuery {
        /// The endpoint's path template.
        path: &'static str,
        /// The field.
        field: String,
    },
}

/// Why the server could not read a request; each maps to a `400` with its own code.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DecodeError {
    /// The body is not JSON, or not the shape this route takes.
    #[error("the request body is not valid JSON for this route: {0}")]
    Body(String),
    /// The query string names an unknown parameter or a value of the wrong type.
    #[error("bad query string: {0}")]
    Query(String),
}

impl DecodeError {
    /// The stable error code (`invalid_json`, `bad_query`).
    pub fn code(&self) -> &'static str {
        match self {
            DecodeError::Body(_) => "invalid_json",
            DecodeError::Query(_) => "bad_query",
        }
    }
}

/// The names of a path template's `{param}` segments, in order.
pub fn path_params(template: &str) -> Vec<&str> {
    template
        .split('/')
        .filter_map(|s| s.strip_prefix('{').and_then(|s| s.strip_suffix('}')))
        .collect()
}

/// Puts `req` on the wire for endpoint `E`.
pub fn encode<E: Endpoint>(req: &E::Request) -> Result<Encoded, EncodeError> {
    let not_object = |reason: String| EncodeError::NotAnObject {
        path: E::PATH,
        reason,
    };
    let mut fields = match serde_json::to_value(req).map_err(|e| not_object(e.to_string()))? {
        Value::Object(m) => m,
        Value::Null => Map::new(),
        other => return Err(not_object(format!("got {other}"))),
    };
    let mut path = String::with_capacity(E::PATH.len() + 16);
    for (i, seg) in E::PATH.split('/').enumerate() {
        if i > 0 {
            path.push('/');
        }
        match seg.strip_prefix('{').and_then(|s| s.strip_suffix('}')) {
            Some(name) => {
                let text = match fields.remove(name) {
                    Some(Value::String(s)) => s,
                    Some(v @ (Value::Number(_) | Value::Bool(_))) => v.to_string(),
                    _ => {
                        return Err(EncodeError::MissingParam {
                            path: E::PATH,
                            param: name.to_owned(),
                        });
                    }
                };
                path.push_str(&segment(&text));
            }
            None => path.push_str(seg),
        }
    }
    if E::METHOD.uses_query() || E::RAW_BODY {
        let mut pairs = Vec::new();
        for (k, v) in fields {
            let mut push = |v: &Value| -> Result<(), EncodeError> {
                match v {
                    Value::Null => {}
                    Value::String(s) => pairs.push(format!("{}={}", segment(&k), segment(s))),
                    Value::Number(_) | Value::Bool(_) => {
                        pairs.push(format!("{}={}", segment(&k), v));
                    }
                    _ => {
                        return Err(EncodeError::NestedQuery {
                            path: E::PATH,
                            field: k.clone(),
                        });
                    }
                }
                Ok(())
            };
            match &v {
                Value::Array(items) => items.iter().try_for_each(&mut push)?,
                other => push(other)?,
            }
        }
        if !pairs.is_empty() {
            path.push('?');
            path.push_str(&pairs.join("&"));
        }
        return Ok(Encoded {
            path_and_query: path,
            body: None,
        });
    }
    let body = serde_json::to_vec(&Value::Object(fields)).map_err(|e| not_object(e.to_string()))?;
    Ok(Encoded {
        path_and_query: path,
        body: Some(body),
    })
}

/// Reads a request for endpoint `E` from its path parameters (in template order, already
/// percent-decoded), its raw query string and its body (ignored for query methods and raw
/// bodies). An empty body reads as `{}`.
pub fn decode<E: Endpoint>(
    params: &[String],
    query: Option<&str>,
    body: &[u8],
) -> Result<E::Request, DecodeError> {
    let mut fields = if E::METHOD.uses_query() || E::RAW_BODY {
        let mut m = Map::new();
        for pair in query.unwrap_or("").split('&').filter(|p| !p.is_empty()) {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            let (k, v) = (percent_decode(k), Value::String(percent_decode(v)));
            match m.get_mut(&k) {
                None => {
                    m.insert(k, v);
                }
                Some(Value::Array(items)) => items.push(v),
                Some(first) => {
                    let first = first.take();
                    m.insert(k, Value::Array(vec![first, v]));
                }
            }
        }
        m
    } else if body.iter().all(u8::is_ascii_whitespace) {
        Map::new()
    } else {
        match serde_json::from_slice::<Value>(body) {
            Ok(Value::Object(m)) => m,
            Ok(_) => return Err(DecodeError::Body("expected a JSON object".to_owned())),
            Err(e) => return Err(DecodeError::Body(e.to_string())),
        }
    };
    for (name, value) in path_params(E::PATH).into_iter().zip(params) {
        fields.insert(name.to_owned(), Value::String(value.clone()));
    }
    serde_json::from_value(Value::Object(fields)).map_err(|e| {
        if E::METHOD.uses_query() || E::RAW_BODY {
            DecodeError::Query(e.to_string())
        } else {
            DecodeError::Body(e.to_string())
        }
    })
}

/// Percent-encodes one path segment or query component (everything but RFC 3986 unreserved
/// characters), so a user-supplied name can never change the request's route.
pub fn segment(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// Decodes `%XX` escapes (`+` is not a space here); invalid escapes and non-UTF-8 results are
/// kept as written, so the route's own validation rejects them with a precise message.
pub fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = |b: u8| (b as char).to_digit(16);
        match (
            bytes[i],
            bytes.get(i + 1).copied().and_then(hex),
            bytes.get(i + 2).copied().and_then(hex),
        ) {
            (b'%', Some(h), Some(l)) => {
                out.push((h * 16 + l) as u8);
                i += 3;
            }
            (b, _, _) => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8(out).unwrap_or_else(|_| s.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::types::{AuditRecordsQuery, HostRef, HostsQuery, InviteRequest};

    #[test]
    fn query_requests_round_trip() {
        let q = AuditRecordsQuery {
            types: vec!["enroll.*".into(), "auth denied&x=1".into()],
            host: Some("web 1".into()),
            from: None,
            limit: Some(5),
        };
        let e = encode::<crate::types::AuditRecords>(&q).unwrap();
        assert!(e.body.is_none());
        let (path, query) = e.path_and_query.split_once('?').unwrap();
        assert_eq!(path, "/v1/audit/records");
        let back = decode::<crate::types::AuditRecords>(&[], Some(query), b"").unwrap();
        assert_eq!(back, q);
    }

    #[test]
    fn path_params_are_encoded_and_cannot_change_the_route() {
        let e = encode::<crate::types::HostsShow>(&HostRef {
            name: "../secrets/x?y".into(),
        })
        .unwrap();
        assert_eq!(e.path_and_query, "/v1/hosts/..%2Fsecrets%2Fx%3Fy");
        let back = decode::<crate::types::HostsShow>(&["a/b".into()], None, b"").unwrap();
        assert_eq!(back.name, "a/b");
    }

    #[test]
    fn bodies_round_trip_and_unknown_fields_are_refused() {
        let req = InviteRequest {
            name: "web1".into(),
            tags: [("env".to_owned(), "prod".to_owned())].into(),
            groups: vec!["web".into()],
            ttl: Some("1h".into()),
        };
        let e = encode::<crate::types::VpnInvite>(&req).unwrap();
        let back = decode::<crate::types::VpnInvite>(&[], None, &e.body.unwrap()).unwrap();
        assert_eq!(back, req);
        let err = decode::<crate::types::VpnInvite>(&[], None, br#"{"name":"a","nope":1}"#);
        assert!(matches!(err, Err(DecodeError::Body(_))));
        let err = decode::<crate::types::HostsList>(&[], Some("nope=1"), b"");
        assert!(matches!(err, Err(DecodeError::Query(_))));
        let ok = decode::<crate::types::HostsList>(&[], Some("selector=tag%3Aenv%3Dprod"), b"");
        assert_eq!(
            ok.unwrap(),
            HostsQuery {
                selector: Some("tag:env=prod".into())
            }
        );
    }

    #[test]
    fn percent_decoding_keeps_what_it_cannot_decode() {
        assert_eq!(percent_decode("a%20b"), "a b");
        assert_eq!(percent_decode("a%2"), "a%2");
        assert_eq!(percent_decode("%FF"), "%FF");
    }
}

/// Fuzz harness for the control API's request decoding ([`decode`]) of every endpoint: path
/// parameters, query strings and bodies come from any local caller. `TETHER_FUZZ_CASES` sets
/// the number of cases (`scripts/fuzz` for long runs).
#[cfg(test)]
mod fuzz {
    use super::*;
    use crate::types as t;
    use proptest::prelude::*;

    fn cases() -> u32 {
        std::env::var("TETHER_FUZZ_CASES")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(256)
    }

    fn all(params: &[String], query: Option<&str>, body: &[u8]) {
        macro_rules! each {
            ($($e:ty),* $(,)?) => {$( let _ = decode::<$e>(params, query, body); )*};
        }
        each!(
            t::Healthz,
            t::Exec,
            t::Readyz,
            t::Metrics,
            t::Status,
            t::ConfigShow,
            t::Reload,
            t::AuditVerify,
            t::AuditRecords,
            t::AuditFollow,
            t::AuditExport,
            t::AuditCheckpoint,
            t::AuditRotateKey,
            t::PolicyGet,
            t::PolicyCheck,
            t::PolicyTest,
            t::PolicyReload,
            t::VpnInvite,
            t::VpnReinvite,
            t::VpnRevoke,
            t::VpnRotateKeys,
            t::VpnRotateInviteKey,
            t::VpnStatusGet,
            t::HostsList,
            t::HostsShow,
            t::HostsRemove,
            t::PluginsList,
            t::PluginsReload,
            t::SecretsList,
            t::SecretsSet,
            t::SecretsRemove,
            t::SecretsRotate,
        );
    }

    /// JSON-ish bodies: objects with the field names the API uses and values of every type.
    fn jsonish() -> impl Strategy<Value = String> {
        let key = prop_oneof![
            Just("name"),
            Just("all"),
            Just("tags"),
            Just("groups"),
            Just("ttl"),
            Just("command"),
            Just("path"),
            Just("limit"),
            Just("type"),
            Just("host"),
            Just("from"),
            Just("as_user"),
            Just("as_role"),
            Just("ticket"),
            Just("fixtures"),
            Just("kind"),
            Just("x"),
        ];
        let value = prop_oneof![
            Just("null".to_string()),
            Just("true".to_string()),
            Just("-1".to_string()),
            Just("1e400".to_string()),
            Just("18446744073709551616".to_string()),
            Just("[]".to_string()),
            Just("{}".to_string()),
            Just("[\"a\",1]".to_string()),
            Just("{\"k\":\"v\"}".to_string()),
            ".{0,30}".prop_map(|s| format!("{s:?}")),
        ];
        prop::collection::vec((key, value), 0..6).prop_map(|kv| {
            let inner: Vec<String> = kv.into_iter().map(|(k, v)| format!("{k:?}:{v}")).collect();
            format!("{{{}}}", inner.join(","))
        })
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(cases()))]

        #[test]
        fn fuzz_decode_bytes(
            params in prop::collection::vec(".{0,20}", 0..3),
            query in proptest::option::of("[a-z_=&%0-9A-F.*+-]{0,80}"),
            body in prop::collection::vec(any::<u8>(), 0..256),
        ) {
            all(&params, query.as_deref(), &body);
        }

        #[test]
        fn fuzz_decode_jsonish(
            params in prop::collection::vec("[a-z0-9.-]{0,12}", 0..2),
            body in jsonish(),
            query in proptest::option::of("(limit|type|host|from|name|all)=[^&]{0,12}(&(limit|type|host)=[^&]{0,8}){0,3}"),
        ) {
            all(&params, query.as_deref(), body.as_bytes());
        }
    }
}
