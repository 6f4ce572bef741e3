//! `bangerd`: the banger daemon.
//!
//! Request path: [`server`] accepts a connection and reads the caller's
//! credentials; [`server::conn`] frames lines (with passed descriptors) and
//! decodes JSON-RPC; [`dispatch`] finds the method's handler in the one table
//! built by [`handlers::table`]; the handler validates, then either answers
//! from the store or starts an asynchronous operation in [`ops`] whose body
//! lives in the subsystem module ([`kernels`], [`images`]).
//!
//! See ARCHITECTURE.md for the lock and state rules.

pub mod app;
pub mod build_requests;
pub mod build_turns;
pub mod builds;
pub mod bundles;
pub mod caller;
pub mod caller_files;
pub mod disk;
pub mod dns;
pub mod doctor;
pub mod error;
pub mod guest;
pub mod images;
pub mod kernels;
pub mod logfile;
pub mod logging;
pub mod netfilter;
mod notify;
pub mod ops;
pub mod privileged;
pub mod pull;
pub mod reconcile;
pub mod registry;
pub mod rpc;
pub mod server;
pub mod staging;
mod system_groups;
pub mod vm;
pub mod vmm;

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use banger_core::config::Config;
use banger_core::paths::Paths;
use banger_core::store::Store;
use banger_core::timefmt;
use clap::Parser;
use tokio_util::sync::CancellationToken;

use crate::app::App;
use crate::ops::Ops;

/// How long shutdown waits for running operations to clean up.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);

#[derive(Debug, Parser)]
#[command(
    name = "bangerd",
    version,
    about = "The banger daemon (normally started by `banger` or systemd)"
)]
pub struct Args {
    /// Put config, state, cache, runtime files and logs under DIR.
    #[arg(long, env = "BANGER_HOME", value_name = "DIR")]
    pub home: Option<PathBuf>,
    /// Log to stderr instead of the log file.
    #[arg(long)]
    pub log_stderr: bool,
    /// Log filter (tracing EnvFilter syntax; RUST_LOG overrides).
    #[arg(long, default_value = "info")]
    pub log_level: String,
}

/// The `bangerd` binary's main.
pub fn main() -> ExitCode {
    let args = Args::parse();
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("bangerd: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match rt.block_on(run(args)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e:#}");
            eprintln!("bangerd: {e:#}");
            ExitCode::FAILURE
        }
    }
}

pub async fn run(args: Args) -> anyhow::Result<()> {
    let paths = Paths::resolve(args.home.as_deref());
    make_dirs(&paths)?;
    let config = Config::load(&paths.config_file)?;
    let log_target = logging::init(&paths, &config, args.log_stderr, &args.log_level)
        .context("cannot open the log")?;
    let _lock = server::acquire_lock(&paths)?;
    let store = Arc::new(
        Store::open(&paths.db())
            .with_context(|| format!("cannot open {}", paths.db().display()))?,
    );
    let ops = Ops::new(store.clone());
    reconcile::at_start(&paths, &store, &ops).context("start-up reconciliation failed")?;
    let gid = socket_gid(&config)?;
    let vmms = vmm::registry::Vmms::new(&config);
    let (procs, exits) = vm::procs::Procs::new();
    let shutdown = CancellationToken::new();
    let dns = start_dns(&config, &store, &shutdown).await;
    let vms = Arc::new(vm::Vms::new(vm::service::Deps {
        paths: paths.clone(),
        config: config.clone(),
        store: store.clone(),
        disks: Arc::new(privileged::SystemHost),
        net_host: config
            .network
            .enabled
            .then(|| Arc::new(privileged::SystemHost) as Arc<dyn privileged::NetHost>),
        vmms,
        procs,
        dns,
        shutdown: shutdown.clone(),
    }));
    let registry = Arc::new(registry::Registry {
        paths: paths.clone(),
        config: config.clone(),
        store: store.clone(),
        turns: Default::default(),
    });
    let d = Arc::new(App {
        vms: vms.clone(),
        registry,
        ops,
        paths: paths.clone(),
        config,
        started_at: timefmt::now(),
        started: Instant::now(),
        shutdown,
        log_target,
    });
    // Before accepting requests: re-adopt running VMs, settle the rest.
    vm::reaper::reconcile_at_start(&vms)
        .await
        .context("VM reconciliation failed")?;
    if let Err(e) = vm::network::reconcile_at_start(&vms).await {
        // The registry and stopped VMs still work; starts will report it.
        tracing::error!(error = %e, "host network reconciliation failed");
    }
    let listener = server::bind(&paths, gid)?;
    tokio::spawn(vm::reaper::run(vms.clone(), exits));
    tokio::spawn(vm::reaper::cap_logs_forever(vms.clone()));
    tracing::info!(
        version = env!("CARGO_PKG_VERSION"),
        pid = std::process::id(),
        socket = %paths.socket().display(),
        "bangerd listening"
    );
    spawn_signal_watch(d.shutdown.clone())?;
    notify::notify("READY=1");
    server::serve(d.clone(), Arc::new(rpc::handlers::table()), listener).await;

    tracing::info!("shutting down");
    notify::notify("STOPPING=1");
    server::remove_socket(&paths.socket());
    d.ops.shutdown(SHUTDOWN_GRACE).await;
    vm::network::shutdown(&vms).await;
    if let Err(e) = store.checkpoint() {
        tracing::warn!(error = %e, "WAL checkpoint failed");
    }
    tracing::info!("bye");
    Ok(())
}

/// The DNS server on `[network] dns_listen`; a failure to bind is logged,
/// not fatal (VMs run without name resolution).
async fn start_dns(
    config: &Config,
    store: &Arc<Store>,
    shutdown: &CancellationToken,
) -> Option<dns::DnsServer> {
    if !config.network.enabled {
        return None;
    }
    let addr: std::net::SocketAddr = match config.network.dns_listen.parse() {
        Ok(a) => a,
        Err(_) => {
            tracing::error!(value = %config.network.dns_listen, "config [network] dns_listen is not an address:port");
            return None;
        }
    };
    let store = store.clone();
    let lookup: dns::Lookup =
        Arc::new(move |name: &str| store.address_by_vm_name(name).ok().flatten());
    match dns::DnsServer::start(&[addr], lookup, shutdown.clone()).await {
        Ok(s) => {
            tracing::info!(addrs = ?s.local_addrs(), "DNS for <name>.vm listening");
            Some(s)
        }
        Err(e) => {
            tracing::error!(addr = %addr, error = %e, "cannot start the DNS server");
            None
        }
    }
}

fn spawn_signal_watch(token: CancellationToken) -> anyhow::Result<()> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    tokio::spawn(async move {
        tokio::select! {
            _ = term.recv() => tracing::info!("SIGTERM"),
            _ = int.recv() => tracing::info!("SIGINT"),
        }
        token.cancel();
    });
    Ok(())
}

/// State and cache are private to the daemon; the runtime dir must be
/// traversable so socket-group members can reach the socket (itself 0660,
/// the socket group), but the per-VM runtime dirs under `vms/` hold VMM
/// control sockets (a VMM's API socket means code execution as root), so
/// `vms/` and every dir in it are 0700.
fn make_dirs(paths: &Paths) -> anyhow::Result<()> {
    for (dir, mode) in [
        (&paths.runtime_dir, 0o755),
        (&paths.runtime_dir.join("vms"), 0o700),
        (&paths.state_dir, 0o700),
        (&paths.cache_dir, 0o700),
        (&paths.log_dir, 0o750),
        (&paths.kernels_dir(), 0o700),
        (&paths.images_dir(), 0o700),
        (&paths.vms_dir(), 0o700),
        (&paths.staging_dir(), 0o700),
    ] {
        mkdir(dir, mode)?;
    }
    Ok(())
}

fn mkdir(dir: &Path, mode: u32) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(mode))
        .with_context(|| format!("cannot set mode of {}", dir.display()))
}

/// The socket's group: the configured one (which must exist), else `banger`
/// when that group exists, else none (root only).
fn socket_gid(config: &Config) -> anyhow::Result<Option<u32>> {
    match config.daemon.socket_group.as_deref() {
        Some(g) => system_groups::gid_of(g)?
            .map(Some)
            .with_context(|| format!("socket_group {g:?} (config [daemon]) does not exist")),
        None => system_groups::gid_of("banger"),
    }
}
