//! `daemon.doctor`: the host checks of [`banger_core::doctor`] and those
//! only the daemon can make (crate::vm::checks), together on a blocking
//! thread — they run tools and read routes over netlink.

use std::sync::Arc;

use banger_core::config::Config;
use banger_core::paths::Paths;
use banger_proto::methods::daemon::DoctorReport;

use crate::error::Error;
use crate::vm::Vms;

pub async fn report(paths: &Paths, config: &Config, vms: &Arc<Vms>) -> Result<DoctorReport, Error> {
    let (paths, config, vms) = (paths.clone(), config.clone(), vms.clone());
    let checks = tokio::task::spawn_blocking(move || {
        let mut checks = banger_core::doctor::run_checks(&paths, &config);
        checks.push(crate::vm::checks::network(&vms));
        checks.push(crate::vm::checks::dns(&vms));
        checks
    })
    .await
    .map_err(|e| Error::internal(e.to_string()))?;
    Ok(DoctorReport {
        source: "daemon".into(),
        checks,
    })
}
