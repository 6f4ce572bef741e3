//! Rendering a command's result once: every command returns one typed value
//! that is [`Render`]; `main` prints it as text or, with `--json`, as the
//! same value serialised (docs/json.md). Targets that failed inside a result
//! (`vm stop a b` where `b` failed) are part of the value: its JSON says so,
//! its text goes to stdout and its failures to stderr, and the exit status is
//! the first failure's.

use std::io::Write;
use std::process::ExitCode;

use serde::Serialize;

use crate::error::Failure;

/// A command's result.
pub trait Render: Serialize {
    /// What stdout shows without `--json` (may be empty).
    fn text(&self) -> String;

    /// Targets that failed, in order, for stderr and the exit status.
    fn failures(&self) -> Vec<(&str, &Failure)> {
        Vec::new()
    }

    /// The exit status when nothing failed outright (1 for an unhealthy VM
    /// or a failed doctor check).
    fn status(&self) -> u8 {
        0
    }
}

/// The object-safe side of [`Render`], so commands can return any result.
pub trait Rendered {
    fn json(&self) -> serde_json::Result<String>;
    fn text(&self) -> String;
    fn failures(&self) -> Vec<(&str, &Failure)>;
    fn status(&self) -> u8;
}

impl<T: Render> Rendered for T {
    fn json(&self) -> serde_json::Result<String> {
        serde_json::to_string_pretty(self)
    }
    fn text(&self) -> String {
        Render::text(self)
    }
    fn failures(&self) -> Vec<(&str, &Failure)> {
        Render::failures(self)
    }
    fn status(&self) -> u8 {
        Render::status(self)
    }
}

/// What a command hands back to `main`.
pub enum Outcome {
    /// A result to render.
    Value(Box<dyn Rendered>),
    /// The command streamed its output itself (logs -f, completion, a guest
    /// command's output) and ends with this status.
    Streamed(u8),
}

impl Outcome {
    pub fn of<T: Render + 'static>(v: T) -> Outcome {
        Outcome::Value(Box::new(v))
    }
}

/// Prints `v` one way or the other; returns its exit status.
pub fn emit(v: &dyn Rendered, json: bool) -> ExitCode {
    let mut out = std::io::stdout().lock();
    let printed = if json {
        v.json()
            .map_err(std::io::Error::other)
            .and_then(|s| writeln!(out, "{s}"))
    } else {
        out.write_all(v.text().as_bytes())
    };
    let _ = out.flush();
    drop(out);
    let failures = v.failures();
    if !json {
        for (target, f) in &failures {
            eprint!("{}", f.human(Some(target)));
        }
    }
    if let Err(e) = printed {
        // A closed pipe (`banger vm ls | head -1`) is not worth a message.
        if e.kind() != std::io::ErrorKind::BrokenPipe {
            eprintln!("error: cannot write the result: {e}");
        }
        return ExitCode::FAILURE;
    }
    ExitCode::from(exit_of(v))
}

/// The exit status of a result: its first failure's, else its own.
pub fn exit_of(v: &dyn Rendered) -> u8 {
    match v.failures().first() {
        Some((_, f)) => f.kind.exit_code(),
        None => v.status(),
    }
}

/// A command that failed as a whole: `{"error": {...}}` on stdout with
/// `--json`, `error:`/`hint:` lines on stderr without.
pub fn emit_error(f: &Failure, json: bool) -> ExitCode {
    if json {
        #[derive(Serialize)]
        struct Doc<'a> {
            error: &'a Failure,
        }
        let s = serde_json::to_string_pretty(&Doc { error: f }).expect("plain data serialises");
        let _ = writeln!(std::io::stdout(), "{s}");
    } else {
        eprint!("{}", f.human(None));
    }
    f.exit_code()
}

/// One line of a streamed result: a JSON line with `--json`, else its text.
pub fn stream<T: Render>(v: &T, json: bool) -> std::io::Result<()> {
    let mut out = std::io::stdout().lock();
    if json {
        writeln!(out, "{}", serde_json::to_string(v)?)?;
    } else {
        out.write_all(v.text().as_bytes())?;
    }
    out.flush()
}

/// A result whose text is one sentence about a plain value (`deleted image
/// x`): the JSON is the value itself.
pub struct Said<T: Serialize> {
    pub value: T,
    pub text: String,
}

impl<T: Serialize> Serialize for Said<T> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        self.value.serialize(s)
    }
}

impl<T: Serialize> Render for Said<T> {
    fn text(&self) -> String {
        self.text.clone()
    }
}

/// `value` with the text `line` (a newline is added).
pub fn said<T: Serialize>(value: T, line: impl Into<String>) -> Said<T> {
    let mut text = line.into();
    if !text.is_empty() && !text.ends_with('\n') {
        text.push('\n');
    }
    Said { value, text }
}
