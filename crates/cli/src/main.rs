//! The `hoard` command: the server and the client subcommands.

mod backup;
mod client_args;
mod restore;
mod serve;
mod snapshots;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "hoard",
    version,
    about = "Deduplicating backup server and client"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Serve a datastore over the hoard protocol.
    Serve(serve::ServeArgs),
    /// Back up disk images (regular files or block devices) into a new
    /// snapshot, uploading only what the server lacks.
    Backup(backup::BackupArgs),
    /// List the snapshots on the server.
    Snapshots(snapshots::SnapshotsArgs),
    /// Restore an image of a snapshot to a file, a block device or stdout.
    Restore(restore::RestoreArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    if !matches!(cli.command, Command::Serve(_)) {
        // Client commands: warnings (e.g. "no incremental base") on
        // stderr, without the server's timestamps; RUST_LOG for more.
        tracing_subscriber::fmt()
            .with_env_filter(
                tracing_subscriber::EnvFilter::try_from_default_env()
                    .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
            )
            .without_time()
            .with_target(false)
            .with_writer(std::io::stderr)
            .init();
    }
    let result = match cli.command {
        Command::Serve(args) => serve::run(args),
        Command::Backup(args) => backup::run(args),
        Command::Snapshots(args) => snapshots::run(args),
        Command::Restore(args) => restore::run(args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        // Client errors carry their kind's exit code (README) and name
        // their cause in their own message.
        Err(e) => match e.downcast_ref::<hoard_client::Error>() {
            Some(client) => {
                eprintln!("hoard: {client}");
                ExitCode::from(client.exit_code())
            }
            None => {
                eprintln!("hoard: {e:#}");
                ExitCode::from(1)
            }
        },
    }
}
