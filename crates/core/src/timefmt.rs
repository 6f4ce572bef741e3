//! Timestamps are RFC 3339 UTC strings everywhere (store, protocol, output).

use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;

pub fn now() -> String {
    format(OffsetDateTime::now_utc())
}

pub fn format(t: OffsetDateTime) -> String {
    t.format(&Rfc3339).expect("UTC timestamps always format")
}

pub fn parse(s: &str) -> Option<OffsetDateTime> {
    OffsetDateTime::parse(s, &Rfc3339).ok()
}

/// Seconds since `s` (0 if unparsable or in the future).
pub fn age_secs(s: &str) -> u64 {
    parse(s)
        .map(|t| (OffsetDateTime::now_utc() - t).whole_seconds().max(0) as u64)
        .unwrap_or(0)
}

/// The timestamp `d` ago.
pub fn ago(d: std::time::Duration) -> String {
    format(OffsetDateTime::now_utc() - d)
}
