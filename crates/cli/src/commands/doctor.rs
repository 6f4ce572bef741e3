//! `banger doctor`: the daemon's view of the host when it runs (it is root and
//! sees what matters), else the same checks run here. Never starts the daemon:
//! doctor is what you run when the daemon will not start. Exits 1 on any fail.

use std::process::ExitCode;

use banger_core::config::Config;
use banger_proto::methods::daemon::{Check, CheckStatus, Doctor, DoctorReport};
use banger_proto::methods::Empty;

use super::Env;
use crate::{autostart, output};

pub fn run(env: &Env) -> anyhow::Result<ExitCode> {
    let mut report = match autostart::connect(&env.paths, false) {
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
    report.checks.shrink_to_fit();
    if env.json {
        output::json(&report)?;
    } else {
        print(&report);
    }
    Ok(if report.failed() {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    })
}

fn print(r: &DoctorReport) {
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
    t.print();
    println!("(checks run by {})", r.source);
}
