//! `banger version`: this client's version and, if one answers, the daemon's.
//! Never starts the daemon.

use banger_proto::PROTOCOL_VERSION;
use serde::Serialize;

use super::Env;
use crate::autostart;
use crate::client::Client;
use crate::render::{Outcome, Render};

#[derive(Serialize)]
struct Versions {
    client: Side,
    daemon: Option<Daemon>,
}

#[derive(Serialize)]
struct Side {
    version: &'static str,
    protocol: u32,
}

#[derive(Serialize)]
struct Daemon {
    version: String,
    protocol: u32,
    pid: u32,
}

impl Render for Versions {
    fn text(&self) -> String {
        let mut s = format!(
            "banger {} (protocol {})\n",
            self.client.version, self.client.protocol
        );
        s.push_str(&match &self.daemon {
            Some(d) => format!(
                "bangerd {} (protocol {}, pid {})\n",
                d.version, d.protocol, d.pid
            ),
            None => "bangerd not running\n".into(),
        });
        s
    }
}

pub fn run(env: &Env) -> anyhow::Result<Outcome> {
    let daemon = Client::connect_raw(&env.paths.socket())
        .ok()
        .and_then(|mut c| autostart::check_protocol(&mut c).ok())
        .map(|d| Daemon {
            version: d.version,
            protocol: d.protocol,
            pid: d.pid,
        });
    Ok(Outcome::of(Versions {
        client: Side {
            version: env!("CARGO_PKG_VERSION"),
            protocol: PROTOCOL_VERSION,
        },
        daemon,
    }))
}
