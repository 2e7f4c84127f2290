//! `hoard serve`: open (or create) a datastore and serve it over TLS, and
//! optionally over plain version 1 for legacy clients.

use std::io::Write;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result};
use clap::Args;
use hoard_auth::{Principal, Role, Scope, TokenStore, UserStore};
use hoard_datastore::Datastore;
use hoard_server::{Listeners, ServerConfig};

#[derive(Args)]
pub struct ServeArgs {
    /// Datastore directory; created if missing or empty. The server's
    /// certificate, key and API tokens live in its `.server/` directory.
    /// [default: $XDG_DATA_HOME/hoard/datastore, i.e. ~/.local/share/hoard/datastore]
    #[arg(long, env = "HOARD_DATASTORE")]
    datastore: Option<PathBuf>,
    /// Directory of the server's certificate, key and API tokens
    /// [default: the datastore's .server/].
    #[arg(long, env = "HOARD_STATE_DIR")]
    state_dir: Option<PathBuf>,
    /// Address of the TLS listener (port 0 picks a free port).
    #[arg(long, default_value = "127.0.0.1:8007")]
    listen: SocketAddr,
    /// Also serve protocol version 1 without TLS or tokens on this
    /// address, for legacy clients (loopback only, ideally). Its sessions
    /// act with --v1-role over --v1-path.
    #[arg(long, value_name = "ADDR")]
    listen_v1: Option<SocketAddr>,
    /// Role of anonymous version 1 sessions: backup (default), reader or
    /// admin.
    #[arg(long, default_value = "backup", requires = "listen_v1")]
    v1_role: Role,
    /// Paths (TYPE or TYPE/ID) anonymous version 1 sessions may use;
    /// repeatable; default everything.
    #[arg(long = "v1-path", requires = "listen_v1")]
    v1_paths: Vec<Scope>,
    /// Connections at once.
    #[arg(long, default_value_t = 1024)]
    max_connections: usize,
    /// Connections of one token at once.
    #[arg(long, default_value_t = 64)]
    max_connections_per_token: usize,
    /// Seconds from connect until authenticated.
    #[arg(long, default_value_t = 10.0, value_name = "SECONDS")]
    handshake_timeout: f64,
    /// Seconds a connection with nothing in flight may stay silent.
    #[arg(long, default_value_t = 600.0, value_name = "SECONDS")]
    idle_timeout: f64,
    /// Seconds a packet may take to arrive whole.
    #[arg(long, default_value_t = 120.0, value_name = "SECONDS")]
    packet_timeout: f64,
    #[command(flatten)]
    storage: crate::storage_args::StorageArgs,
}

pub fn default_datastore() -> Result<PathBuf> {
    let base = dirs::data_dir().context("no home directory: pass --datastore")?;
    Ok(base.join("hoard").join("datastore"))
}

/// The server's state directory beside its datastore: TLS certificate and
/// key, API tokens.
pub fn state_dir(datastore: &Path) -> PathBuf {
    datastore.join(".server")
}

fn seconds(s: f64, what: &str) -> Result<Duration> {
    Duration::try_from_secs_f64(s).with_context(|| format!("--{what}: {s} is not a duration"))
}

pub fn run(args: ServeArgs) -> Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    let dir = match args.datastore {
        Some(d) => d,
        None => default_datastore()?,
    };
    let ds = Datastore::open_or_create_with(&dir, args.storage.backend())
        .with_context(|| format!("opening datastore {}", dir.display()))?;
    ds.start_serving()
        .with_context(|| format!("opening datastore {}", dir.display()))?;
    // What a killed server left: settled before anyone lists it.
    // Best effort: what cannot be settled now is left for GC.
    let recovered = ds.recover().unwrap_or_else(|e| {
        tracing::warn!("recovering datastore {}: {e}", dir.display());
        hoard_datastore::Recovery::default()
    });
    for snap in &recovered.snapshots_incomplete {
        tracing::warn!(%snap, "left unfinished by a dead writer: now incomplete");
    }
    for snap in &recovered.snapshots_removed {
        tracing::info!(%snap, "left empty by a dead writer: removed");
    }
    if recovered.temp_files_removed > 0 {
        tracing::info!(
            files = recovered.temp_files_removed,
            "removed temp files of dead processes"
        );
    }
    let state = args.state_dir.clone().unwrap_or_else(|| state_dir(&dir));
    let identity = hoard_transport::tls::load_or_create_identity(&state)
        .with_context(|| format!("loading the TLS certificate in {}", state.display()))?;
    let nofile = hoard_server::raise_open_file_limit();
    let mut config = ServerConfig {
        limits: hoard_server::limits_for_open_files(nofile),
        ..ServerConfig::default()
    };
    let l = &mut config.limits;
    l.max_connections = args.max_connections;
    l.max_connections_per_principal = args.max_connections_per_token;
    l.handshake_timeout = seconds(args.handshake_timeout, "handshake-timeout")?;
    l.idle_timeout = seconds(args.idle_timeout, "idle-timeout")?;
    l.packet_timeout = seconds(args.packet_timeout, "packet-timeout")?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the runtime")?;
    runtime.block_on(async move {
        let main = hoard_server::bind(args.listen)
            .await
            .with_context(|| format!("listening on {}", args.listen))?;
        let addr = main.local_addr()?;
        let v1 = match args.listen_v1 {
            Some(a) => {
                let l = hoard_server::bind(a)
                    .await
                    .with_context(|| format!("listening on {a}"))?;
                let principal = Principal::new(
                    hoard_auth::access::ANONYMOUS_V1,
                    args.v1_role,
                    args.v1_paths.clone(),
                );
                Some((l, principal))
            }
            None => None,
        };
        // Scripts and tests read these lines; the last names the address.
        outln!(
            "hoard: certificate {} SHA-256 fingerprint {}",
            identity.cert_path.display(),
            identity.fingerprint
        )?;
        if let Some((l, p)) = &v1 {
            let paths = if p.scopes.is_empty() {
                "everything".to_string()
            } else {
                p.scopes.iter().map(|s| s.to_string()).collect::<Vec<_>>().join(", ")
            };
            outln!(
                "hoard: protocol version 1 without TLS on {} (anonymous sessions: role {}, paths {paths})",
                l.local_addr()?,
                p.role
            )?;
            tracing::warn!("protocol version 1 without TLS or tokens is on: anyone reaching it acts as role {}", p.role);
        }
        if let Some(storage) = ds.object_storage() {
            outln!("hoard: chunks on {}", storage.describe())?;
        }
        outln!("hoard: web page and API on https://{addr}/ (users: `hoard user add`)")?;
        outln!("hoard: serving datastore {} on {addr}", dir.display())?;
        std::io::stdout().flush()?;
        tracing::info!(fingerprint = %identity.fingerprint, "TLS on {addr}");
        let listeners = Listeners { main, v1 };
        hoard_server::serve(
            listeners,
            ds,
            TokenStore::new(&state),
            UserStore::new(&state),
            identity.config,
            config,
            shutdown_signal(),
        )
        .await
        .context("serving")
    })
}

/// Completes on Ctrl-C or SIGTERM.
async fn shutdown_signal() {
    let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(s) => s,
        Err(_) => {
            let _ = tokio::signal::ctrl_c().await;
            return;
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}
