//! `banger doctor`: the daemon's view of the host when it runs (it is root and
//! sees what matters), else the same checks run here. Never starts the daemon:
//! doctor is what you run when the daemon will not start. Exits 1 on any fail.

use banger_core::config::Config;
use banger_proto::methods::daemon::{Check, CheckStatus, Doctor, DoctorReport};
use banger_proto::methods::Empty;

use serde::Serialize;

use super::Env;
use crate::render::{Outcome, Render};
use crate::{autostart, output};

/// The report; exit status 1 when a check failed.
#[derive(Serialize)]
#[serde(transparent)]
struct Report(DoctorReport);

impl Render for Report {
    fn text(&self) -> String {
        text(&self.0)
    }

    fn status(&self) -> u8 {
        u8::from(self.0.failed())
    }
}

pub fn run(env: &Env) -> anyhow::Result<Outcome> {
    let report = match autostart::connect(&env.paths, false) {
        Ok(mut c) => {
            let mut r = c.call::<Doctor>(&Empty {})?;
            r.checks.insert(
                0,
                Check {
                    name: "daemon".into(),
                    status: CheckStatus::Ok,
                    detail: format!("running, answering at {}", env.paths.socket().display()),
                    fix: None,
                },
            );
            r
        }
        Err(e) => {
            let config = Config::load(&env.paths.config_file).unwrap_or_default();
            let mut checks = banger_core::doctor::run_checks(&env.paths, &config);
            checks.insert(
                0,
                Check {
                    name: "daemon".into(),
                    status: CheckStatus::Warn,
                    detail: format!("{e:#}")
                        .lines()
                        .next()
                        .unwrap_or_default()
                        .to_string(),
                    fix: Some(
                        "sudo banger system install (or run any banger command as root)".into(),
                    ),
                },
            );
            DoctorReport {
                source: "local".into(),
                checks,
            }
        }
    };
    Ok(Outcome::of(Report(report)))
}

fn text(r: &DoctorReport) -> String {
    let mut t = output::Table::new(&["STATUS", "CHECK", "DETAIL"]);
    for c in &r.checks {
        let status = match c.status {
            CheckStatus::Ok => "ok",
            CheckStatus::Warn => "warn",
            CheckStatus::Fail => "FAIL",
            CheckStatus::Skip => "skip",
        };
        t.row(vec![status.into(), c.name.clone(), c.detail.clone()]);
        if let Some(fix) = &c.fix {
            if c.status != CheckStatus::Ok {
                t.row(vec![String::new(), String::new(), format!("fix: {fix}")]);
            }
        }
    }
    format!("{}(checks run by {})\n", t.render(), r.source)
}
