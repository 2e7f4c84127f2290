//! The `hoard` command: the server and the client subcommands.

// First: its macros are in scope for the modules after it.
#[macro_use]
mod out;
mod admin_args;
mod backup;
mod client_args;
mod gc;
mod key;
mod known_servers;
mod ls;
mod protect;
mod prune;
mod restore;
mod serve;
mod snapshots;
mod storage_args;
mod token;
mod user;
mod verify;

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
    /// Back up disk images (regular files or block devices) and directory
    /// trees into a new snapshot, uploading only what the server lacks.
    Backup(backup::BackupArgs),
    /// List the snapshots on the server.
    Snapshots(snapshots::SnapshotsArgs),
    /// Restore an image of a snapshot to a file, a block device or stdout,
    /// or an archive (all, a subtree or one file) into a directory.
    Restore(restore::RestoreArgs),
    /// List a directory of a file-tree archive.
    Ls(ls::LsArgs),
    /// Remove snapshots by a retention policy (maintenance, on the
    /// datastore; safe while the server runs).
    Prune(prune::PruneArgs),
    /// Remove the chunks no snapshot references (maintenance; safe while
    /// backups run).
    Gc(gc::GcArgs),
    /// Read and check every chunk of snapshots; record the result
    /// (maintenance; safe while backups run).
    Verify(verify::VerifyArgs),
    /// Keep a snapshot from ever being pruned.
    Protect(protect::ProtectArgs),
    /// Undo `hoard protect`.
    Unprotect(protect::ProtectArgs),
    /// Create, list and revoke API tokens (on the server's machine).
    Token(token::TokenArgs),
    /// Add, list and remove users of the web page (on the server's
    /// machine).
    User(user::UserArgs),
    /// The server's TLS certificate (on the server's machine).
    Cert(token::CertArgs),
    /// Show or assign the owner of a backup group (on the server's
    /// machine).
    Owner(token::OwnerArgs),
    /// Encryption keys: create, print on paper, recover with a master key.
    Key(key::KeyArgs),
}

/// glibc serves allocations above 128 KiB with mmap and gives them back
/// on free, and trims the heap top eagerly: for a program that allocates
/// and frees 4 MiB chunk buffers all the time, every chunk then costs a
/// round of page faults and zeroing. Measured on the 2 GiB image (mutated,
/// so every chunk moves): restore 3.3-3.7 s -> 2.5-2.8 s, backup 3.7 s ->
/// 3.5 s.
/// Keeping such blocks in the heap makes the buffers reused. Memory stays
/// bounded by what the program holds at its peak (a few chunks per core)
/// plus what a few arenas retain.
fn tune_allocator() {
    // SAFETY: mallopt only sets malloc's tunables; it is thread-safe and
    // has no memory-safety preconditions. Called first in main, before
    // any allocation-heavy work.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 64 << 20);
        libc::mallopt(libc::M_TRIM_THRESHOLD, 128 << 20);
        libc::mallopt(libc::M_ARENA_MAX, 4);
    }
}

fn main() -> ExitCode {
    tune_allocator();
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
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .with_writer(std::io::stderr)
            .init();
    }
    let result = match cli.command {
        Command::Serve(args) => serve::run(args),
        Command::Backup(args) => backup::run(args),
        Command::Snapshots(args) => snapshots::run(args),
        Command::Restore(args) => restore::run(args),
        Command::Ls(args) => ls::run(args),
        Command::Prune(args) => prune::run(args),
        Command::Gc(args) => gc::run(args),
        Command::Verify(args) => verify::run(args),
        Command::Protect(args) => protect::run(args, true),
        Command::Unprotect(args) => protect::run(args, false),
        Command::Token(args) => token::run(args),
        Command::User(args) => user::run(args),
        Command::Cert(args) => token::run_cert(args),
        Command::Owner(args) => token::run_owner(args),
        Command::Key(args) => key::run(args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        // The reader of our output went away (`| head`): not a failure.
        Err(e) if out::closed(&e) => ExitCode::SUCCESS,
        // Client errors carry their kind's exit code (README) and name
        // their cause in their own message.
        Err(e) => match e.downcast_ref::<hoard_client::Error>() {
            Some(client) => {
                eprintln!("hoard: {client}");
                ExitCode::from(client.exit_code())
            }
            None if let Some(admin) = e.downcast_ref::<admin_args::AdminError>() => {
                eprintln!("hoard: {admin}");
                ExitCode::from(admin.code)
            }
            None => {
                eprintln!("hoard: {e:#}");
                ExitCode::from(1)
            }
        },
    }
}
