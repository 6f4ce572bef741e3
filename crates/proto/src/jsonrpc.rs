//! JSON-RPC 2.0 envelopes and the request decoder.
//!
//! [`decode`] is the one place untrusted bytes become requests; it is what the
//! fuzz target drives. It never panics and returns, for every input, either the
//! requests to run or the error response to send.

use serde::de::Deserializer;
use serde::ser::{SerializeMap, Serializer};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::error::{ErrorKind, RpcError};

/// One decoded request. `id == None` means a notification: run it, answer nothing.
#[derive(Debug, Clone, PartialEq)]
pub struct Request {
    pub id: Option<Value>,
    pub method: String,
    /// `Value::Null` when the request had no params.
    pub params: Value,
}

/// What one line held.
#[derive(Debug)]
pub enum Incoming {
    Single(Result<Request, Response>),
    /// A batch; each entry is a request to run or an error response for an
    /// invalid member. Never empty.
    Batch(Vec<Result<Request, Response>>),
}

/// A response; serialises to exactly one of `result` / `error`.
#[derive(Debug, Clone, PartialEq)]
pub struct Response {
    pub id: Value,
    pub outcome: Result<Value, RpcError>,
}

impl Response {
    pub fn error(id: Value, err: RpcError) -> Self {
        Response {
            id,
            outcome: Err(err),
        }
    }

    pub fn ok(id: Value, result: Value) -> Self {
        Response {
            id,
            outcome: Ok(result),
        }
    }
}

impl Serialize for Response {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut m = s.serialize_map(Some(3))?;
        m.serialize_entry("jsonrpc", "2.0")?;
        match &self.outcome {
            Ok(v) => m.serialize_entry("result", v)?,
            Err(e) => m.serialize_entry("error", e)?,
        }
        m.serialize_entry("id", &self.id)?;
        m.end()
    }
}

/// A response as a client reads it.
#[derive(Debug, Deserialize)]
pub struct ResponseIn {
    #[serde(default)]
    pub id: Value,
    #[serde(default, deserialize_with = "present")]
    pub result: Option<Value>,
    #[serde(default)]
    pub error: Option<RpcError>,
}

// Distinguishes `"result": null` (Some(Null)) from a missing member (None).
fn present<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Value>, D::Error> {
    Value::deserialize(d).map(Some)
}

impl ResponseIn {
    pub fn into_result(self) -> Result<Value, RpcError> {
        match (self.result, self.error) {
            (_, Some(e)) => Err(e),
            (Some(v), None) => Ok(v),
            (None, None) => Err(RpcError::new(
                ErrorKind::Internal,
                "malformed response: neither result nor error",
            )),
        }
    }
}

/// Encodes a request line (with the trailing newline).
pub fn encode_request(id: u64, method: &str, params: &Value) -> Vec<u8> {
    let mut v = serde_json::to_vec(&serde_json::json!({
        "jsonrpc": "2.0",
        "id": id,
        "method": method,
        "params": params,
    }))
    .expect("a JSON value always serialises");
    v.push(b'\n');
    v
}

/// Encodes one response line, or a batch of them, with the trailing newline.
pub fn encode_responses(responses: &[Response], batch: bool) -> Vec<u8> {
    let mut v = if batch {
        serde_json::to_vec(responses)
    } else {
        serde_json::to_vec(&responses[0])
    }
    .expect("responses always serialise");
    v.push(b'\n');
    v
}

/// Decodes one line of input. `Err` is a response to send as is (parse error or
/// empty batch).
pub fn decode(line: &[u8]) -> Result<Incoming, Response> {
    let value: Value = serde_json::from_slice(line).map_err(|e| {
        Response::error(
            Value::Null,
            RpcError::new(ErrorKind::Parse, format!("parse error: {e}")),
        )
    })?;
    match value {
        Value::Array(items) if items.is_empty() => Err(Response::error(
            Value::Null,
            RpcError::new(ErrorKind::InvalidRequest, "empty batch"),
        )),
        Value::Array(items) => Ok(Incoming::Batch(items.into_iter().map(request).collect())),
        other => Ok(Incoming::Single(request(other))),
    }
}

fn invalid(id: Value, why: &str) -> Response {
    Response::error(
        id,
        RpcError::new(ErrorKind::InvalidRequest, format!("invalid request: {why}")),
    )
}

fn request(value: Value) -> Result<Request, Response> {
    let Value::Object(mut obj) = value else {
        return Err(invalid(Value::Null, "not an object"));
    };
    // The id is checked first so every later error can echo it back.
    let id = match obj.remove("id") {
        None => None,
        Some(id @ (Value::Null | Value::String(_))) => Some(id),
        Some(Value::Number(n)) if n.is_i64() || n.is_u64() => Some(Value::Number(n)),
        Some(_) => {
            return Err(invalid(
                Value::Null,
                "id must be a string, an integer or null",
            ))
        }
    };
    let echo = id.clone().unwrap_or(Value::Null);
    match obj.get("jsonrpc") {
        Some(Value::String(v)) if v == "2.0" => {}
        _ => return Err(invalid(echo, "\"jsonrpc\" must be \"2.0\"")),
    }
    let method = match obj.remove("method") {
        Some(Value::String(m)) => m,
        _ => return Err(invalid(echo, "\"method\" must be a string")),
    };
    let params = match obj.remove("params") {
        None => Value::Null,
        Some(p @ (Value::Object(_) | Value::Array(_))) => p,
        Some(_) => return Err(invalid(echo, "\"params\" must be an object or an array")),
    };
    Ok(Request { id, method, params })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn single(line: &str) -> Result<Request, Response> {
        match decode(line.as_bytes()).unwrap() {
            Incoming::Single(r) => r,
            Incoming::Batch(_) => panic!("batch"),
        }
    }

    #[test]
    fn decodes_a_call() {
        let r = single(r#"{"jsonrpc":"2.0","id":7,"method":"daemon.status","params":{}}"#).unwrap();
        assert_eq!(r.id, Some(json!(7)));
        assert_eq!(r.method, "daemon.status");
        assert_eq!(r.params, json!({}));
    }

    #[test]
    fn notification_has_no_id() {
        let r = single(r#"{"jsonrpc":"2.0","method":"x"}"#).unwrap();
        assert_eq!(r.id, None);
        assert_eq!(r.params, Value::Null);
    }

    #[test]
    fn parse_error_has_null_id() {
        let e = decode(b"{nope").unwrap_err();
        assert_eq!(e.id, Value::Null);
        assert!(e.outcome.unwrap_err().is(ErrorKind::Parse));
    }

    #[test]
    fn invalid_members_are_invalid_requests_with_id_echoed() {
        for (line, id) in [
            (r#"{"jsonrpc":"1.0","id":1,"method":"x"}"#, json!(1)),
            (r#"{"jsonrpc":"2.0","id":"a","method":5}"#, json!("a")),
            (
                r#"{"jsonrpc":"2.0","id":2,"method":"x","params":3}"#,
                json!(2),
            ),
            (r#"{"jsonrpc":"2.0","id":{},"method":"x"}"#, Value::Null),
            (r#"{"jsonrpc":"2.0","id":1.5,"method":"x"}"#, Value::Null),
            (r#"42"#, Value::Null),
        ] {
            let e = single(line).unwrap_err();
            assert_eq!(e.id, id, "{line}");
            assert!(
                e.outcome.unwrap_err().is(ErrorKind::InvalidRequest),
                "{line}"
            );
        }
    }

    #[test]
    fn batches() {
        assert!(decode(b"[]")
            .unwrap_err()
            .outcome
            .unwrap_err()
            .is(ErrorKind::InvalidRequest));
        let Incoming::Batch(items) =
            decode(br#"[{"jsonrpc":"2.0","id":1,"method":"a"}, 1]"#).unwrap()
        else {
            panic!("not a batch")
        };
        assert_eq!(items.len(), 2);
        assert!(items[0].is_ok());
        assert!(items[1].is_err());
    }

    #[test]
    fn response_round_trip_keeps_null_result() {
        let line = encode_responses(&[Response::ok(json!(1), Value::Null)], false);
        let r: ResponseIn = serde_json::from_slice(&line).unwrap();
        assert_eq!(r.into_result().unwrap(), Value::Null);
        let line = encode_responses(
            &[Response::error(json!(1), RpcError::not_found("vm", "a"))],
            false,
        );
        let r: ResponseIn = serde_json::from_slice(&line).unwrap();
        assert!(r.into_result().unwrap_err().is(ErrorKind::NotFound));
    }
}
