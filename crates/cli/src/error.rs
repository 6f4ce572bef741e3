//! What went wrong, as the CLI reports it: one [`Failure`] (kind, message,
//! hint, data) made from whatever error a command returned, printed as
//! `error: ...` / `hint: ...` on stderr or as `{"error": {...}}` on stdout
//! with `--json`, and an exit status chosen by its kind (docs/json.md).
//!
//! Commands keep returning `anyhow::Error` with context; the typed errors
//! inside the chain ([`ClientError`], [`ConnectError`], [`UsageError`],
//! `std::io::Error`) decide the kind, so no command picks exit codes itself.

use std::process::ExitCode;

use banger_proto::{ErrorKind, RpcError};
use serde::Serialize;
use serde_json::Value;

use crate::autostart::ConnectError;
use crate::client::ClientError;

/// A mistake in how the command was called (bad flag value, missing
/// confirmation): exit status 2, like clap's own usage errors.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct UsageError(pub String);

/// `Err(usage("..."))` for a command line the CLI refuses.
pub fn usage(msg: impl Into<String>) -> anyhow::Error {
    UsageError(msg.into()).into()
}

/// A refusal found on this side that means the same as one of the daemon's
/// error kinds (`vm ssh` of a stopped VM is `invalid_state`).
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct Refusal {
    pub kind: ErrorKind,
    pub message: String,
    pub hint: Option<String>,
}

/// `Err(refuse(kind, "..."))`.
pub fn refuse(kind: ErrorKind, message: impl Into<String>) -> anyhow::Error {
    Refusal {
        kind,
        message: message.into(),
        hint: None,
    }
    .into()
}

/// The kinds a failure can have: the daemon's error kinds plus the CLI's own.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// An error kind the daemon returned.
    Rpc(ErrorKind),
    /// The command line is wrong.
    Usage,
    /// No daemon answers, it could not be started, or the connection broke.
    DaemonUnavailable,
    /// Anything else that failed here (a local file, a tool, ssh).
    Failed,
}

impl Kind {
    /// The stable `kind` string of the JSON error.
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Rpc(k) => k.as_str(),
            Kind::Usage => "usage",
            Kind::DaemonUnavailable => "daemon_unavailable",
            Kind::Failed => "failed",
        }
    }

    /// The exit status for this kind (the table in docs/json.md).
    pub fn exit_code(self) -> u8 {
        match self {
            Kind::Failed => 1,
            Kind::Usage | Kind::Rpc(ErrorKind::InvalidParams) => 2,
            Kind::Rpc(ErrorKind::NotFound) => 3,
            Kind::Rpc(ErrorKind::AlreadyExists) => 4,
            Kind::Rpc(ErrorKind::InvalidState) => 5,
            Kind::Rpc(ErrorKind::Busy) => 6,
            Kind::Rpc(ErrorKind::PermissionDenied) => 7,
            Kind::Rpc(ErrorKind::PreconditionFailed) => 8,
            Kind::Rpc(ErrorKind::Timeout) => 9,
            Kind::DaemonUnavailable => 10,
            Kind::Rpc(ErrorKind::IncompatibleProtocol) => 11,
            // What a shell reports for a command ended by SIGINT.
            Kind::Rpc(ErrorKind::Cancelled) => 130,
            // Bugs on one side or the other: the generic failure.
            Kind::Rpc(
                ErrorKind::Parse
                | ErrorKind::InvalidRequest
                | ErrorKind::MethodNotFound
                | ErrorKind::Internal
                | ErrorKind::RequestTooLarge,
            ) => 1,
        }
    }
}

/// One failure, ready to print either way.
#[derive(Debug, Clone, PartialEq)]
pub struct Failure {
    pub kind: Kind,
    pub message: String,
    pub hint: Option<String>,
    /// The daemon's extra fields (`resource`, `name`, `used_by`, ...), or null.
    pub data: Value,
}

/// The JSON shape: `{"kind", "message", "hint", "data"}`.
impl Serialize for Failure {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        #[derive(Serialize)]
        struct Wire<'a> {
            kind: &'a str,
            message: &'a str,
            hint: Option<&'a str>,
            data: &'a Value,
        }
        Wire {
            kind: self.kind.as_str(),
            message: &self.message,
            hint: self.hint.as_deref(),
            data: &self.data,
        }
        .serialize(s)
    }
}

impl Failure {
    pub fn new(kind: Kind, message: impl Into<String>) -> Failure {
        Failure {
            kind,
            message: message.into(),
            hint: None,
            data: Value::Null,
        }
    }

    pub fn with_hint(mut self, hint: impl Into<String>) -> Failure {
        self.hint = Some(hint.into());
        self
    }

    /// From a daemon error: its kind, message, `data.hint`, and the rest of
    /// `data` (without the `kind` and `hint` already given).
    pub fn from_rpc(e: &RpcError) -> Failure {
        let kind = e.kind().map_or(Kind::Failed, Kind::Rpc);
        let data = match &e.data {
            Some(Value::Object(map)) => {
                let rest: serde_json::Map<String, Value> = map
                    .iter()
                    .filter(|(k, _)| k.as_str() != "kind" && k.as_str() != "hint")
                    .map(|(k, v)| (k.clone(), v.clone()))
                    .collect();
                if rest.is_empty() {
                    Value::Null
                } else {
                    Value::Object(rest)
                }
            }
            Some(other) => other.clone(),
            None => Value::Null,
        };
        Failure {
            kind,
            message: e.message.clone(),
            hint: e.hint().map(str::to_string),
            data,
        }
    }

    /// Classifies an error by the first typed error found in its chain.
    pub fn from_error(e: &anyhow::Error) -> Failure {
        for cause in e.chain() {
            if let Some(c) = cause.downcast_ref::<ClientError>() {
                return match c {
                    ClientError::Rpc(rpc) => Failure::from_rpc(rpc),
                    ClientError::Io { .. } => {
                        Failure::new(Kind::DaemonUnavailable, format!("{e:#}"))
                    }
                    ClientError::Protocol(_) => {
                        Failure::new(Kind::Rpc(ErrorKind::Internal), format!("{e:#}"))
                    }
                };
            }
            if let Some(c) = cause.downcast_ref::<ConnectError>() {
                let f = Failure::new(c.kind(), c.to_string());
                return match c.hint() {
                    Some(h) => f.with_hint(h),
                    None => f,
                };
            }
            if let Some(r) = cause.downcast_ref::<Refusal>() {
                let f = Failure::new(Kind::Rpc(r.kind), format!("{e:#}"));
                return match &r.hint {
                    Some(h) => f.with_hint(h.clone()),
                    None => f,
                };
            }
            if cause.downcast_ref::<UsageError>().is_some() {
                return Failure::new(Kind::Usage, format!("{e:#}"));
            }
            if let Some(io) = cause.downcast_ref::<std::io::Error>() {
                let kind = match io.kind() {
                    std::io::ErrorKind::NotFound => Kind::Rpc(ErrorKind::NotFound),
                    std::io::ErrorKind::PermissionDenied => Kind::Rpc(ErrorKind::PermissionDenied),
                    _ => Kind::Failed,
                };
                return Failure::new(kind, format!("{e:#}"));
            }
        }
        Failure::new(Kind::Failed, format!("{e:#}"))
    }

    pub fn exit_code(&self) -> ExitCode {
        ExitCode::from(self.kind.exit_code())
    }

    /// `error: [NAME: ]MESSAGE` and `hint: HINT` lines for stderr.
    pub fn human(&self, target: Option<&str>) -> String {
        let style = crate::style::Stderr::detect();
        let mut s = match target {
            Some(t) => format!("{}: {t}: {}\n", style.error("error"), self.message),
            None => format!("{}: {}\n", style.error("error"), self.message),
        };
        if let Some(h) = &self.hint {
            s.push_str(&format!("{}: {h}\n", style.hint("hint")));
        }
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn rpc_errors_keep_kind_hint_and_data() {
        let e = RpcError::not_found("vm", "box").with("hint", "banger vm ls -a");
        let f = Failure::from_error(&anyhow::Error::from(ClientError::Rpc(e)));
        assert_eq!(f.kind, Kind::Rpc(ErrorKind::NotFound));
        assert_eq!(f.kind.exit_code(), 3);
        assert_eq!(
            serde_json::to_value(&f).unwrap(),
            json!({
                "kind": "not_found",
                "message": "vm \"box\" not found",
                "hint": "banger vm ls -a",
                "data": {"resource": "vm", "name": "box"},
            })
        );
    }

    #[test]
    fn context_does_not_hide_the_kind() {
        use anyhow::Context;
        let r: anyhow::Result<()> = Err(usage("bad size")).context("vm create");
        let f = Failure::from_error(&r.unwrap_err());
        assert_eq!((f.kind, f.kind.exit_code()), (Kind::Usage, 2));
        assert_eq!(f.message, "vm create: bad size");

        let io = std::fs::File::open("/nonexistent/banger")
            .context("cannot open rootfs /nonexistent/banger")
            .unwrap_err();
        let f = Failure::from_error(&io);
        assert_eq!(f.kind.as_str(), "not_found");
        assert!(f.message.starts_with("cannot open rootfs"), "{}", f.message);

        let plain = Failure::from_error(&anyhow::anyhow!("mkfs.ext4 failed"));
        assert_eq!((plain.kind.as_str(), plain.kind.exit_code()), ("failed", 1));
        assert_eq!(plain.data, Value::Null);
    }

    #[test]
    fn every_daemon_kind_has_a_documented_code() {
        let mut seen = std::collections::BTreeMap::new();
        let local = [Kind::Usage, Kind::DaemonUnavailable, Kind::Failed];
        for k in ErrorKind::ALL.map(Kind::Rpc).into_iter().chain(local) {
            seen.insert(k.as_str(), k.exit_code());
        }
        assert_eq!(seen["not_found"], 3);
        assert_eq!(seen["invalid_state"], 5);
        assert_eq!(seen["busy"], 6);
        assert_eq!(seen["permission_denied"], 7);
        assert_eq!(seen["invalid_params"], 2);
        assert_eq!(seen["cancelled"], 130);
        // docs/json.md lists each kind with its code.
        let doc = include_str!("../../../docs/json.md");
        for (kind, code) in seen {
            assert!(
                doc.contains(&format!("| {code} | `{kind}` |")),
                "docs/json.md's exit status table lacks `| {code} | `{kind}` |`"
            );
        }
    }
}
