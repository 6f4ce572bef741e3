//! Typed JSON-RPC errors.
//!
//! Every error carries a numeric code (the JSON-RPC standard ones plus banger's
//! own in the -32000..-32099 server range), a message a user can act on, and
//! `data` with at least `{"kind": "<stable snake_case kind>"}` so scripts can
//! match on the kind instead of parsing messages.

use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

/// The error kinds banger returns. The numeric codes are part of the protocol.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// Invalid JSON was received (-32700).
    Parse,
    /// The JSON is not a valid JSON-RPC request (-32600).
    InvalidRequest,
    /// No such method (-32601).
    MethodNotFound,
    /// Params do not match the method (-32602).
    InvalidParams,
    /// A bug or an unexpected host failure (-32603).
    Internal,
    /// The named object does not exist (or is not visible to the caller).
    NotFound,
    /// An object with that name already exists.
    AlreadyExists,
    /// The object is in a state that does not allow the operation.
    InvalidState,
    /// The host lacks something the operation needs (a binary, a device, space).
    PreconditionFailed,
    /// The caller may not do this.
    PermissionDenied,
    /// Another operation holds the object; retry later.
    Busy,
    /// The request line exceeded the size limit.
    RequestTooLarge,
    /// The operation was cancelled.
    Cancelled,
    /// The peer speaks another protocol version.
    IncompatibleProtocol,
    /// A deadline passed.
    Timeout,
}

impl ErrorKind {
    pub const ALL: [ErrorKind; 15] = [
        ErrorKind::Parse,
        ErrorKind::InvalidRequest,
        ErrorKind::MethodNotFound,
        ErrorKind::InvalidParams,
        ErrorKind::Internal,
        ErrorKind::NotFound,
        ErrorKind::AlreadyExists,
        ErrorKind::InvalidState,
        ErrorKind::PreconditionFailed,
        ErrorKind::PermissionDenied,
        ErrorKind::Busy,
        ErrorKind::RequestTooLarge,
        ErrorKind::Cancelled,
        ErrorKind::IncompatibleProtocol,
        ErrorKind::Timeout,
    ];

    pub fn code(self) -> i64 {
        match self {
            ErrorKind::Parse => -32700,
            ErrorKind::InvalidRequest => -32600,
            ErrorKind::MethodNotFound => -32601,
            ErrorKind::InvalidParams => -32602,
            ErrorKind::Internal => -32603,
            ErrorKind::NotFound => -32001,
            ErrorKind::AlreadyExists => -32002,
            ErrorKind::InvalidState => -32003,
            ErrorKind::PreconditionFailed => -32004,
            ErrorKind::PermissionDenied => -32005,
            ErrorKind::Busy => -32006,
            ErrorKind::RequestTooLarge => -32007,
            ErrorKind::Cancelled => -32008,
            ErrorKind::IncompatibleProtocol => -32009,
            ErrorKind::Timeout => -32010,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            ErrorKind::Parse => "parse_error",
            ErrorKind::InvalidRequest => "invalid_request",
            ErrorKind::MethodNotFound => "method_not_found",
            ErrorKind::InvalidParams => "invalid_params",
            ErrorKind::Internal => "internal",
            ErrorKind::NotFound => "not_found",
            ErrorKind::AlreadyExists => "already_exists",
            ErrorKind::InvalidState => "invalid_state",
            ErrorKind::PreconditionFailed => "precondition_failed",
            ErrorKind::PermissionDenied => "permission_denied",
            ErrorKind::Busy => "busy",
            ErrorKind::RequestTooLarge => "request_too_large",
            ErrorKind::Cancelled => "cancelled",
            ErrorKind::IncompatibleProtocol => "incompatible_protocol",
            ErrorKind::Timeout => "timeout",
        }
    }

    pub fn from_code(code: i64) -> Option<ErrorKind> {
        ErrorKind::ALL.into_iter().find(|k| k.code() == code)
    }
}

/// A JSON-RPC error object.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, thiserror::Error)]
#[error("{message}")]
pub struct RpcError {
    pub code: i64,
    pub message: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data: Option<Value>,
}

impl RpcError {
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        RpcError {
            code: kind.code(),
            message: message.into(),
            data: Some(json!({ "kind": kind.as_str() })),
        }
    }

    /// Adds a field to `data` (which always is an object for errors built here).
    pub fn with(mut self, key: &str, value: impl Serialize) -> Self {
        let v = serde_json::to_value(value).unwrap_or(Value::Null);
        match self.data.as_mut() {
            Some(Value::Object(map)) => {
                map.insert(key.to_string(), v);
            }
            _ => self.data = Some(json!({ key: v })),
        }
        self
    }

    pub fn kind(&self) -> Option<ErrorKind> {
        ErrorKind::from_code(self.code)
    }

    pub fn is(&self, kind: ErrorKind) -> bool {
        self.code == kind.code()
    }

    /// A hint stored in `data.hint`, if any.
    pub fn hint(&self) -> Option<&str> {
        self.data.as_ref()?.get("hint")?.as_str()
    }

    pub fn not_found(what: &str, name: &str) -> Self {
        RpcError::new(ErrorKind::NotFound, format!("{what} {name:?} not found"))
            .with("resource", what)
            .with("name", name)
    }

    pub fn already_exists(what: &str, name: &str) -> Self {
        RpcError::new(
            ErrorKind::AlreadyExists,
            format!("{what} {name:?} already exists"),
        )
        .with("resource", what)
        .with("name", name)
    }

    pub fn invalid_params(message: impl Into<String>) -> Self {
        RpcError::new(ErrorKind::InvalidParams, message)
    }

    pub fn internal(message: impl Into<String>) -> Self {
        RpcError::new(ErrorKind::Internal, message)
    }

    pub fn permission_denied(message: impl Into<String>) -> Self {
        RpcError::new(ErrorKind::PermissionDenied, message)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_are_unique_and_round_trip() {
        let mut codes: Vec<i64> = ErrorKind::ALL.iter().map(|k| k.code()).collect();
        codes.sort();
        codes.dedup();
        assert_eq!(codes.len(), ErrorKind::ALL.len());
        for k in ErrorKind::ALL {
            assert_eq!(ErrorKind::from_code(k.code()), Some(k));
        }
    }

    #[test]
    fn data_carries_kind_and_fields() {
        let e = RpcError::not_found("image", "x").with("hint", "run banger image list");
        let v = serde_json::to_value(&e).unwrap();
        assert_eq!(v["code"], -32001);
        assert_eq!(v["data"]["kind"], "not_found");
        assert_eq!(v["data"]["resource"], "image");
        assert_eq!(e.hint(), Some("run banger image list"));
    }
}
