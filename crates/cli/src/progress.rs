//! Following an asynchronous operation to its end: live stages on a terminal
//! (one redrawn line), plain `stage:` lines otherwise; Ctrl-C cancels the
//! operation (the daemon cleans up what it made) and exits 130.

use std::io::{IsTerminal, Write};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use anyhow::bail;
use banger_proto::methods::op::{Cancel, OpIdParams, OpState, OperationInfo, Wait, WaitParams};

use crate::client::Client;
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
}

impl Drop for Interrupt {
    fn drop(&mut self) {
        signal_hook::low_level::unregister(self.sig);
    }
}

/// Waits for operation `id` to finish; returns its final info (succeeded).
/// A failed or cancelled operation is an error carrying the daemon's message.
pub fn follow(
    client: &mut Client,
    id: &str,
    quiet: bool,
    interrupt: &Interrupt,
) -> anyhow::Result<OperationInfo> {
    follow_inner(client, id, quiet, &interrupt.flag)
}

fn follow_inner(
    client: &mut Client,
    id: &str,
    quiet: bool,
    interrupted: &AtomicBool,
) -> anyhow::Result<OperationInfo> {
    let tty = std::io::stderr().is_terminal() && !quiet;
    let mut last_rev = 0;
    let mut last_stage = String::new();
    let mut cancel_sent = false;
    loop {
        if interrupted.load(Ordering::SeqCst) && !cancel_sent {
            cancel_sent = true;
            if tty {
                eprint!("\r\x1b[K");
            }
            eprintln!("banger: cancelling operation {id}...");
            client.call::<Cancel>(&OpIdParams { id: id.to_string() })?;
        }
        // Short waits so Ctrl-C is noticed promptly.
        let info = client.call::<Wait>(&WaitParams {
            id: id.to_string(),
            after_revision: last_rev,
            timeout_ms: 250,
        })?;
        last_rev = info.revision;
        if !quiet && info.stage != last_stage && info.state == OpState::Running {
            if !tty {
                eprintln!("stage: {}", info.stage);
            }
            last_stage = info.stage.clone();
        }
        if tty {
            eprint!("\r\x1b[K{}", live_line(&info));
            let _ = std::io::stderr().flush();
        }
        if info.state.is_finished() {
            if tty {
                eprint!("\r\x1b[K");
            }
            return match info.state {
                OpState::Succeeded => Ok(info),
                OpState::Cancelled => {
                    eprintln!("banger: cancelled; nothing was kept");
                    std::process::exit(130);
                }
                _ => match info.error {
                    Some(e) => Err(crate::client::ClientError::Rpc(e).into()),
                    None => bail!("operation {id} failed"),
                },
            };
        }
    }
}

fn live_line(info: &OperationInfo) -> String {
    let mut s = format!("{} {}: {}", info.kind, info.target, info.stage);
    if let Some(p) = &info.progress {
        if p.total > 0 {
            let pct = p.done as f64 * 100.0 / p.total as f64;
            s.push_str(&format!(" {pct:.0}%"));
        }
        if p.unit == "bytes" {
            s.push_str(&format!(" ({})", output::size(p.done)));
        }
    }
    s
}

/// One line per stage with its duration, for the end of a human-mode run.
pub fn stage_summary(info: &OperationInfo) -> String {
    info.stages
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
