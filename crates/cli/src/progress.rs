//! Following an asynchronous operation to its end. On a terminal, an
//! indicatif display on stderr: a bar with bytes, rate and ETA while the
//! daemon counts bytes of a known total (copies, downloads), a spinner with
//! the stage and its elapsed time otherwise (builds); colour only when
//! [`crate::style::colour_stderr`] allows. Not on a terminal: one plain
//! `stage: NAME` line per stage. Ctrl-C cancels the operation (the daemon
//! cleans up what it made) and the command fails with kind `cancelled`
//! (exit 130), through `main`, so destructors run.

use std::io::IsTerminal;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context};
use banger_proto::methods::op::{
    Cancel, OpIdParams, OpState, Operation, OperationInfo, Progress, StageInfo, Wait, WaitParams,
};
use banger_proto::{ErrorKind, RpcError};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use serde::Serialize;

use crate::client::{Client, ClientError};
use crate::output;

/// Catches Ctrl-C from before an operation is begun until it ends, so an
/// early Ctrl-C still cancels the operation instead of orphaning it.
pub struct Interrupt {
    flag: Arc<AtomicBool>,
    sig: signal_hook::SigId,
}

impl Interrupt {
    pub fn install() -> anyhow::Result<Interrupt> {
        let flag = Arc::new(AtomicBool::new(false));
        let sig = signal_hook::flag::register(signal_hook::consts::SIGINT, flag.clone())?;
        Ok(Interrupt { flag, sig })
    }

    /// Set by Ctrl-C (for code that polls a cancel flag).
    pub fn flag(&self) -> &AtomicBool {
        &self.flag
    }

    /// Whether Ctrl-C was pressed since the last call.
    pub fn take(&self) -> bool {
        self.flag.swap(false, Ordering::SeqCst)
    }
}

impl Drop for Interrupt {
    fn drop(&mut self) {
        signal_hook::low_level::unregister(self.sig);
    }
}

/// `{"id", "stages"}` of a finished operation, as results carry it.
#[derive(Debug, Clone, Serialize)]
pub struct OpSummary {
    pub id: String,
    pub stages: Vec<StageInfo>,
}

impl OpSummary {
    pub fn of(op: &OperationInfo) -> OpSummary {
        OpSummary {
            id: op.id.clone(),
            stages: op.stages.clone(),
        }
    }

    pub fn total_ms(&self) -> f64 {
        self.stages.iter().filter_map(|s| s.duration_ms).sum()
    }
}

/// The typed result of a succeeded operation: its type comes from the
/// operation ([`Operation::Output`]), not from the caller's guess.
pub trait OpResult {
    fn result_of<O: Operation>(&self) -> anyhow::Result<O::Output>;
}

impl OpResult for OperationInfo {
    fn result_of<O: Operation>(&self) -> anyhow::Result<O::Output> {
        if self.kind != O::KIND {
            bail!(
                "operation {} is a {}, not a {}",
                self.id,
                self.kind,
                O::KIND
            );
        }
        serde_json::from_value(self.result.clone().unwrap_or_default())
            .with_context(|| format!("unexpected {} result", O::KIND))
    }
}

/// Waits for operation `id` to finish; returns its final info (succeeded).
/// A failed or cancelled operation is an error carrying the daemon's error.
pub fn follow(
    client: &mut Client,
    id: &str,
    quiet: bool,
    interrupt: &Interrupt,
) -> anyhow::Result<OperationInfo> {
    let mut display = if quiet {
        Display::Quiet
    } else if std::io::stderr().is_terminal() {
        Display::live(crate::style::colour_stderr())
    } else {
        Display::Lines {
            last: String::new(),
        }
    };
    let r = follow_inner(client, id, &mut display, &interrupt.flag);
    display.finish();
    r
}

fn follow_inner(
    client: &mut Client,
    id: &str,
    display: &mut Display,
    interrupted: &AtomicBool,
) -> anyhow::Result<OperationInfo> {
    let mut last_rev = 0;
    let mut cancel_sent = false;
    loop {
        if interrupted.load(Ordering::SeqCst) && !cancel_sent {
            cancel_sent = true;
            display.println(&format!("banger: cancelling operation {id}..."));
            client.call::<Cancel>(&OpIdParams { id: id.to_string() })?;
        }
        // Short waits so Ctrl-C is noticed promptly.
        let info = client.call::<Wait>(&WaitParams {
            id: id.to_string(),
            after_revision: last_rev,
            timeout_ms: 250,
        })?;
        last_rev = info.revision;
        display.update(&info);
        if info.state.is_finished() {
            return match info.state {
                OpState::Succeeded => Ok(info),
                OpState::Cancelled => Err(ClientError::Rpc(RpcError::new(
                    ErrorKind::Cancelled,
                    format!("operation {id} cancelled; nothing was kept"),
                ))
                .into()),
                _ => match info.error {
                    Some(e) => Err(ClientError::Rpc(e).into()),
                    None => bail!("operation {id} failed"),
                },
            };
        }
    }
}

/// How the stages of an operation are shown.
enum Display {
    /// `--json`: nothing on stderr.
    Quiet,
    /// Not a terminal: `stage: NAME` once per stage.
    Lines { last: String },
    /// A terminal: a spinner, or a bar while bytes of a known total move.
    Live {
        bar: ProgressBar,
        stage: String,
        bytes: bool,
        colour: bool,
    },
}

impl Display {
    fn live(colour: bool) -> Display {
        let bar = ProgressBar::with_draw_target(None, ProgressDrawTarget::stderr());
        bar.set_style(spinner_style(colour));
        bar.enable_steady_tick(Duration::from_millis(120));
        Display::Live {
            bar,
            stage: String::new(),
            bytes: false,
            colour,
        }
    }

    fn update(&mut self, info: &OperationInfo) {
        match self {
            Display::Quiet => {}
            Display::Lines { last } => {
                if info.state == OpState::Running && info.stage != *last {
                    eprintln!("stage: {}", info.stage);
                    *last = info.stage.clone();
                }
            }
            Display::Live {
                bar,
                stage,
                bytes,
                colour,
            } => {
                if info.stage != *stage {
                    // Each stage's elapsed time starts at zero.
                    bar.reset();
                    *stage = info.stage.clone();
                }
                bar.set_prefix(format!("{} {}", info.kind, info.target));
                bar.set_message(info.stage.clone());
                match byte_progress(info.progress.as_ref()) {
                    Some((done, Some(total))) => {
                        if !*bytes {
                            bar.set_style(bar_style(*colour));
                            *bytes = true;
                        }
                        bar.set_length(total);
                        bar.set_position(done);
                    }
                    other => {
                        if *bytes {
                            bar.set_style(spinner_style(*colour));
                            *bytes = false;
                        }
                        bar.unset_length();
                        // Bytes of an unknown total still show how far it got.
                        if let Some((done, None)) = other {
                            bar.set_message(format!("{} ({})", info.stage, output::size(done)));
                        }
                    }
                }
            }
        }
    }

    /// A line that must not be drawn over.
    fn println(&self, line: &str) {
        match self {
            Display::Live { bar, .. } => bar.suspend(|| eprintln!("{line}")),
            _ => eprintln!("{line}"),
        }
    }

    fn finish(&mut self) {
        if let Display::Live { bar, .. } = self {
            bar.finish_and_clear();
        }
    }
}

/// `(done, Some(total))` for bytes of a known total, `(done, None)` unknown.
fn byte_progress(p: Option<&Progress>) -> Option<(u64, Option<u64>)> {
    let p = p.filter(|p| p.unit == "bytes")?;
    Some((p.done, (p.total > 0).then_some(p.total)))
}

fn spinner_style(colour: bool) -> ProgressStyle {
    let t = if colour {
        "{spinner:.cyan} {prefix}: {msg} {elapsed:.dim}"
    } else {
        "{spinner} {prefix}: {msg} {elapsed}"
    };
    ProgressStyle::with_template(t).expect("a valid template")
}

fn bar_style(colour: bool) -> ProgressStyle {
    let t = if colour {
        "{prefix}: {msg} [{bar:30.cyan/blue}] {bytes}/{total_bytes} {binary_bytes_per_sec} ETA {eta}"
    } else {
        "{prefix}: {msg} [{bar:30}] {bytes}/{total_bytes} {binary_bytes_per_sec} ETA {eta}"
    };
    ProgressStyle::with_template(t)
        .expect("a valid template")
        .progress_chars("=> ")
}

/// One line per stage with its duration, for the end of a human-mode run.
pub fn stage_summary(stages: &[StageInfo]) -> String {
    stages
        .iter()
        .map(|s| {
            format!(
                "{} {}",
                s.name,
                output::millis(s.duration_ms.unwrap_or(0.0))
            )
        })
        .collect::<Vec<_>>()
        .join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(done: u64, total: u64, unit: &str) -> Progress {
        Progress {
            done,
            total,
            unit: unit.into(),
        }
    }

    #[test]
    fn bars_only_for_bytes_of_a_known_total() {
        assert_eq!(byte_progress(Some(&p(5, 10, "bytes"))), Some((5, Some(10))));
        assert_eq!(byte_progress(Some(&p(5, 0, "bytes"))), Some((5, None)));
        assert_eq!(byte_progress(Some(&p(5, 10, "files"))), None);
        assert_eq!(byte_progress(None), None);
    }

    #[test]
    fn styles_parse_with_and_without_colour() {
        for c in [true, false] {
            spinner_style(c);
            bar_style(c);
        }
    }
}
