//! `hoard serve`: open (or create) a datastore and serve it.

use std::io::Write;
use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::Args;
use hoard_datastore::Datastore;
use hoard_server::ServerConfig;

#[derive(Args)]
pub struct ServeArgs {
    /// Datastore directory; created if missing or empty.
    /// [default: $XDG_DATA_HOME/hoard/datastore, i.e. ~/.local/share/hoard/datastore]
    #[arg(long, env = "HOARD_DATASTORE")]
    datastore: Option<PathBuf>,
    /// Address to listen on (port 0 picks a free port).
    #[arg(long, default_value = "127.0.0.1:8007")]
    listen: SocketAddr,
}

pub fn default_datastore() -> Result<PathBuf> {
    let base = dirs::data_dir().context("no home directory: pass --datastore")?;
    Ok(base.join("hoard").join("datastore"))
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
    let ds = Datastore::open_or_create(&dir)
        .with_context(|| format!("opening datastore {}", dir.display()))?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the runtime")?;
    runtime.block_on(async move {
        let listener = hoard_server::bind(args.listen)
            .await
            .with_context(|| format!("listening on {}", args.listen))?;
        let addr = listener.local_addr()?;
        // Scripts and tests read this line to learn the port.
        println!("hoard: serving datastore {} on {addr}", dir.display());
        std::io::stdout().flush()?;
        hoard_server::serve(listener, ds, ServerConfig::default(), shutdown_signal())
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
