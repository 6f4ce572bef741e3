//! `banger version`: this client's version and, if one answers, the daemon's.
//! Never starts the daemon.

use std::process::ExitCode;

use banger_proto::PROTOCOL_VERSION;
use serde_json::json;

use super::Env;
use crate::autostart;
use crate::client::Client;

pub fn run(env: &Env) -> anyhow::Result<ExitCode> {
    let daemon = Client::connect_raw(&env.paths.socket())
        .ok()
        .and_then(|mut c| autostart::check_protocol(&mut c).ok());
    if env.json {
        crate::output::json(&json!({
            "client": { "version": env!("CARGO_PKG_VERSION"), "protocol": PROTOCOL_VERSION },
            "daemon": daemon.as_ref().map(|d| json!({
                "version": d.version, "protocol": d.protocol, "pid": d.pid,
            })),
        }))?;
    } else {
        println!(
            "banger {} (protocol {PROTOCOL_VERSION})",
            env!("CARGO_PKG_VERSION")
        );
        match daemon {
            Some(d) => println!(
                "bangerd {} (protocol {}, pid {})",
                d.version, d.protocol, d.pid
            ),
            None => println!("bangerd not running"),
        }
    }
    Ok(ExitCode::SUCCESS)
}
