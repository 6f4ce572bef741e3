//! `banger bench rpc`: round-trip latency of `daemon.status` over the socket.

use std::process::ExitCode;
use std::time::{Duration, Instant};

use banger_proto::methods::daemon::Status;
use banger_proto::methods::Empty;
use clap::Subcommand;
use serde_json::json;

use super::Env;
use crate::client::Client;
use crate::output;

#[derive(Debug, Subcommand)]
pub enum BenchCmd {
    /// Time daemon.status round trips (one connection per client thread).
    Rpc {
        /// Calls per client.
        #[arg(long, default_value_t = 2000)]
        count: usize,
        /// Concurrent clients.
        #[arg(long, default_value_t = 1)]
        clients: usize,
    },
}

pub fn run(env: &Env, cmd: BenchCmd) -> anyhow::Result<ExitCode> {
    let BenchCmd::Rpc { count, clients } = cmd;
    // Make sure a daemon is up before timing anything.
    drop(env.client()?);
    let socket = env.paths.socket();
    let started = Instant::now();
    let handles: Vec<_> = (0..clients.max(1))
        .map(|_| {
            let socket = socket.clone();
            std::thread::spawn(move || -> anyhow::Result<Vec<Duration>> {
                let mut c = Client::connect_raw(&socket)?;
                // Warm-up: first calls pay for page faults and allocator growth.
                for _ in 0..20 {
                    c.call::<Status>(&Empty {})?;
                }
                let mut v = Vec::with_capacity(count);
                for _ in 0..count {
                    let t = Instant::now();
                    c.call::<Status>(&Empty {})?;
                    v.push(t.elapsed());
                }
                Ok(v)
            })
        })
        .collect();
    let mut all = Vec::new();
    for h in handles {
        all.extend(
            h.join()
                .map_err(|_| anyhow::anyhow!("bench thread panicked"))??,
        );
    }
    let wall = started.elapsed();
    all.sort();
    let pct = |p: f64| all[((all.len() as f64 - 1.0) * p).round() as usize].as_secs_f64() * 1e6;
    let (p50, p90, p99) = (pct(0.50), pct(0.90), pct(0.99));
    let rate = all.len() as f64 / wall.as_secs_f64();
    if env.json {
        output::json(&json!({
            "method": "daemon.status", "calls": all.len(), "clients": clients,
            "p50_us": p50, "p90_us": p90, "p99_us": p99, "calls_per_sec": rate,
        }))?;
    } else {
        println!(
            "daemon.status x{} ({} client(s)): p50 {p50:.0}us  p90 {p90:.0}us  p99 {p99:.0}us  {rate:.0} calls/s",
            all.len(),
            clients
        );
    }
    Ok(ExitCode::SUCCESS)
}
