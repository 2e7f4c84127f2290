//! `hoard key`: the client's encryption key and the master key pair that
//! can recover it (docs/encryption.md). Key files are written 0600, under
//! a temporary name, synced and renamed; an existing file is never
//! replaced.
//!
//! Passphrases come from HOARD_KEY_PASSPHRASE (HOARD_MASTER_PASSPHRASE
//! for a master secret) or are asked for on the terminal; with neither,
//! a command that needs one fails rather than write an unprotected key.

use std::io::{IsTerminal, Read, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use clap::{Args, Subcommand};
use hoard_client::Error;
use hoard_codec::{Argon2Params, Key, KeyFile, MasterPublic, MasterSecret, MasterSecretFile};

use crate::client_args::{ClientArgs, runtime};

#[derive(Args)]
pub struct KeyArgs {
    #[command(subcommand)]
    command: KeyCommand,
}

#[derive(Subcommand)]
enum KeyCommand {
    /// Create a new encryption key file.
    Create {
        /// Where to write it (refused if it exists).
        file: PathBuf,
        /// Store the key unprotected (anyone who reads the file can read
        /// the backups).
        #[arg(long)]
        no_passphrase: bool,
    },
    /// Show a key file's fingerprint and protection.
    Info { file: PathBuf },
    /// Print a key file as text to keep on paper (`hoard key import-paper`
    /// reads it back).
    Paperkey { file: PathBuf },
    /// Rebuild a key file from its paper copy (`-` reads stdin).
    ImportPaper {
        text: PathBuf,
        /// The key file to write (refused if it exists).
        file: PathBuf,
    },
    /// Create a master key pair: PREFIX.pub (give it to clients, `hoard
    /// backup --master-pubkey`) and PREFIX.key (keep it offline; it opens
    /// every backup made with the public key).
    CreateMaster {
        prefix: PathBuf,
        #[arg(long)]
        no_passphrase: bool,
    },
    /// Recover the key of an encrypted snapshot made with --master-pubkey,
    /// using the master secret, into a new key file.
    Recover {
        #[command(flatten)]
        client: ClientArgs,
        /// TYPE/ID/TIME of a snapshot made with the lost key.
        snapshot: String,
        /// The master secret (PREFIX.key of `create-master`).
        #[arg(long)]
        master: PathBuf,
        /// The key file to write (refused if it exists).
        #[arg(long)]
        out: PathBuf,
        /// Store the recovered key unprotected.
        #[arg(long)]
        no_passphrase: bool,
        /// The fingerprint the lost key had (from your records, e.g. the
        /// paper key's first line). The server chose the recovery copy it
        /// handed over, so without this the recovered key is shown and
        /// must be confirmed on a terminal.
        #[arg(long, value_name = "FINGERPRINT")]
        expect: Option<String>,
    },
}

pub fn run(args: KeyArgs) -> Result<()> {
    match args.command {
        KeyCommand::Create {
            file,
            no_passphrase,
        } => {
            let pass = new_passphrase("HOARD_KEY_PASSPHRASE", no_passphrase)?;
            let key = Key::generate();
            let kf = KeyFile::create(&key, pass.as_deref(), Argon2Params::DEFAULT)?;
            write_new(&file, kf.to_json().as_bytes())?;
            outln!("{}", key.fingerprint())?;
            eprintln!(
                "created key {} in {}{}; keep a copy apart from the backups (`hoard key paperkey`)",
                key.fingerprint(),
                file.display(),
                if pass.is_none() { ", unprotected" } else { "" }
            );
        }
        KeyCommand::Info { file } => {
            let kf = read_key_file(&file)?;
            outln!("fingerprint: {}", kf.fingerprint())?;
            outln!("created: {}", kf.created())?;
            outln!(
                "protection: {}",
                if kf.needs_passphrase() {
                    "passphrase (argon2id)"
                } else {
                    "none"
                }
            )?;
        }
        KeyCommand::Paperkey { file } => {
            let kf = read_key_file(&file)?;
            let text = hoard_codec::paper(&kf);
            if text.ends_with('\n') {
                out!("{text}")?;
            } else {
                outln!("{text}")?;
            }
        }
        KeyCommand::ImportPaper { text, file } => {
            if file.exists() {
                return Err(Error::Usage(format!(
                    "{} exists; refusing to replace a key file",
                    file.display()
                ))
                .into());
            }
            let mut raw = String::new();
            if text == Path::new("-") {
                std::io::stdin().read_to_string(&mut raw)?;
            } else {
                raw = std::fs::read_to_string(&text)
                    .with_context(|| format!("reading {}", text.display()))?;
            }
            let kf = hoard_codec::from_paper(&raw).map_err(|e| Error::Usage(e.to_string()))?;
            write_new(&file, kf.to_json().as_bytes())?;
            eprintln!("wrote key {} to {}", kf.fingerprint(), file.display());
        }
        KeyCommand::CreateMaster {
            prefix,
            no_passphrase,
        } => {
            let (sec_path, pub_path) = (with_ext(&prefix, "key"), with_ext(&prefix, "pub"));
            for p in [&sec_path, &pub_path] {
                if p.exists() {
                    return Err(Error::Usage(format!(
                        "{} exists; refusing to replace a key file",
                        p.display()
                    ))
                    .into());
                }
            }
            let pass = new_passphrase("HOARD_MASTER_PASSPHRASE", no_passphrase)?;
            let master = MasterSecret::generate();
            let secret = master.to_file(pass.as_deref(), Argon2Params::DEFAULT)?;
            let public = master.public();
            write_new(&sec_path, secret.to_json().as_bytes())?;
            write_new(
                &pub_path,
                public.to_text(Some("hoard master public key")).as_bytes(),
            )?;
            outln!("{}", public.fingerprint())?;
            eprintln!(
                "master key {}: public part {} (for clients), secret {} (keep it offline)",
                public.fingerprint(),
                pub_path.display(),
                sec_path.display()
            );
        }
        KeyCommand::Recover {
            client,
            snapshot,
            master,
            out,
            no_passphrase,
            expect,
        } => recover(
            client,
            &snapshot,
            &master,
            &out,
            no_passphrase,
            expect.as_deref(),
        )?,
    }
    Ok(())
}

/// The key in `path`, unlocked (asking for its passphrase if needed).
pub fn unlock(path: &Path) -> hoard_client::Result<Key> {
    let kf = read_key_file(path)?;
    let pass = if kf.needs_passphrase() {
        Some(passphrase(
            "HOARD_KEY_PASSPHRASE",
            &format!("Passphrase for key {}: ", path.display()),
        )?)
    } else {
        None
    };
    kf.unlock(pass.as_deref())
        .map_err(|e| Error::Key(format!("key {}: {e}", path.display())))
}

/// The recovery blob of `key` for the master public key in `path`.
pub fn recovery_for(path: &Path, key: &Key) -> hoard_client::Result<Vec<u8>> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| Error::Usage(format!("reading master public key {}: {e}", path.display())))?;
    let public =
        MasterPublic::parse(&text).map_err(|e| Error::Usage(format!("{}: {e}", path.display())))?;
    Ok(public.wrap(key))
}

fn recover(
    client: ClientArgs,
    snapshot: &str,
    master: &Path,
    out: &Path,
    no_passphrase: bool,
    expect: Option<&str>,
) -> Result<()> {
    let expect: Option<hoard_codec::KeyFingerprint> = expect
        .map(|e| e.parse())
        .transpose()
        .map_err(|e: hoard_codec::Error| Error::Usage(e.to_string()))?;
    if expect.is_none() && !std::io::stdin().is_terminal() {
        return Err(Error::Usage(
            "pass --expect FINGERPRINT (the lost key's): the server chose the recovery copy, so the key it opens must be checked against your records".into(),
        )
        .into());
    }
    if out.exists() {
        return Err(Error::Usage(format!(
            "{} exists; refusing to replace a key file",
            out.display()
        ))
        .into());
    }
    let path: hoard_types::SnapshotPath = snapshot
        .parse()
        .map_err(|e| Error::Usage(format!("snapshot {snapshot:?}: {e}")))?;
    let raw = read_bounded(master)
        .map_err(|e| Error::Key(format!("master key {}: {e}", master.display())))?;
    let file = MasterSecretFile::parse(&raw).map_err(|e| Error::Key(e.to_string()))?;
    let pass = if file.needs_passphrase() {
        Some(passphrase(
            "HOARD_MASTER_PASSPHRASE",
            &format!("Passphrase for master key {}: ", master.display()),
        )?)
    } else {
        None
    };
    let secret = file
        .unlock(pass.as_deref())
        .map_err(|e| Error::Key(format!("master key {}: {e}", master.display())))?;
    let new_pass = new_passphrase("HOARD_KEY_PASSPHRASE", no_passphrase)?;
    let rt = runtime()?;
    let listed = rt.block_on(async {
        let conn = client.connect().await?;
        let filter = hoard_protocol::SnapshotFilter {
            ty: Some(path.group.ty),
            id: Some(path.group.id.clone()),
        };
        let list = hoard_client::requests::list_snapshots(&conn, filter).await?;
        conn.close().await?;
        list.into_iter()
            .find(|s| s.path == path)
            .ok_or_else(|| Error::NotFound(format!("snapshot {path} not found")))
    })?;
    let Some(seal) = &listed.manifest.seal else {
        return Err(Error::Usage(format!("snapshot {path} is not encrypted")).into());
    };
    let body = hoard_client::seal::peek(seal)?;
    let Some(blob) = body.recovery.as_deref() else {
        return Err(Error::Key(format!(
            "snapshot {path} (key {}) was made without a master public key: it holds no recovery copy",
            body.key
        ))
        .into());
    };
    let blob =
        hex::decode(blob).map_err(|_| Error::Damaged("the recovery copy is not hex".into()))?;
    let key = secret.unwrap(&blob).map_err(|e| {
        Error::Key(format!(
            "the recovery copy does not open with this master key: {e}"
        ))
    })?;
    // The recovered key must be the one the snapshot names, and its seal
    // must verify with it.
    let mut manifest = listed.manifest.clone();
    match hoard_client::seal::check(&path, &mut manifest, Some(&key)) {
        hoard_client::seal::SealState::Ours => {}
        other => {
            return Err(Error::Damaged(format!(
                "the recovered key {} does not verify snapshot {path}: {other:?}",
                key.fingerprint()
            ))
            .into());
        }
    }
    match expect {
        Some(fp) if fp != key.fingerprint() => {
            return Err(Error::Key(format!(
                "the recovery copy of {path} holds key {}, not the expected {fp}: the server handed over another key's snapshot",
                key.fingerprint()
            ))
            .into());
        }
        Some(_) => {}
        None => {
            eprint!(
                "Snapshot {path} holds a recovery copy of key {}.\nThe server chose it: compare this fingerprint with your records.\nWrite it to {}? [y/N] ",
                key.fingerprint(),
                out.display()
            );
            let mut line = String::new();
            std::io::stdin().read_line(&mut line)?;
            if !matches!(line.trim(), "y" | "Y" | "yes") {
                return Err(Error::Usage("the recovered key was not accepted".into()).into());
            }
        }
    }
    let kf = KeyFile::create(&key, new_pass.as_deref(), Argon2Params::DEFAULT)?;
    write_new(out, kf.to_json().as_bytes())?;
    outln!("{}", key.fingerprint())?;
    eprintln!("recovered key {} into {}", key.fingerprint(), out.display());
    Ok(())
}

/// A key or master file's bytes, refusing anything larger than a key file
/// can be before it is read whole.
fn read_bounded(path: &Path) -> std::io::Result<Vec<u8>> {
    let max = hoard_codec::keyfile::MAX_KEY_FILE_SIZE;
    let mut raw = Vec::new();
    std::fs::File::open(path)?
        .take(max as u64 + 1)
        .read_to_end(&mut raw)?;
    if raw.len() > max {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("more than {max} bytes: not a key file"),
        ));
    }
    Ok(raw)
}

fn read_key_file(path: &Path) -> hoard_client::Result<KeyFile> {
    let raw = read_bounded(path)
        .map_err(|e| Error::Key(format!("cannot read key file {}: {e}", path.display())))?;
    KeyFile::parse(&raw).map_err(|e| Error::Key(format!("key file {}: {e}", path.display())))
}

/// A passphrase from `env`, or asked for on the terminal.
fn passphrase(env: &str, prompt: &str) -> hoard_client::Result<String> {
    if let Ok(p) = std::env::var(env) {
        return Ok(p);
    }
    if !std::io::stdin().is_terminal() {
        return Err(Error::Key(format!(
            "a passphrase is needed: set {env} or run on a terminal"
        )));
    }
    rpassword::prompt_password(prompt)
        .map_err(|e| Error::Key(format!("reading the passphrase: {e}")))
}

/// The passphrase for a new secret file: none if asked for, else from
/// `env` or typed twice on the terminal.
fn new_passphrase(env: &str, none: bool) -> hoard_client::Result<Option<String>> {
    if none {
        return Ok(None);
    }
    if let Ok(p) = std::env::var(env) {
        return non_empty(p).map(Some);
    }
    if !std::io::stdin().is_terminal() {
        return Err(Error::Usage(format!(
            "a passphrase is needed: set {env}, run on a terminal, or pass --no-passphrase"
        )));
    }
    let read = |prompt: &str| {
        rpassword::prompt_password(prompt)
            .map_err(|e| Error::Usage(format!("reading the passphrase: {e}")))
    };
    let first = read("New passphrase: ")?;
    if read("Again: ")? != first {
        return Err(Error::Usage("the passphrases differ".into()));
    }
    non_empty(first).map(Some)
}

fn non_empty(p: String) -> hoard_client::Result<String> {
    if p.is_empty() {
        Err(Error::Usage(
            "an empty passphrase protects nothing; pass --no-passphrase to mean that".into(),
        ))
    } else {
        Ok(p)
    }
}

fn with_ext(prefix: &Path, ext: &str) -> PathBuf {
    let mut s = prefix.as_os_str().to_owned();
    s.push(".");
    s.push(ext);
    PathBuf::from(s)
}

/// Writes a new private file: mode 0600 from the start, synced, renamed
/// into place only if nothing is there, directory synced.
fn write_new(path: &Path, bytes: &[u8]) -> Result<()> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    };
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let name = path
        .file_name()
        .ok_or_else(|| Error::Usage(format!("{} names no file", path.display())))?;
    let tmp = dir.join(format!(
        ".{}.{}.tmp",
        name.to_string_lossy(),
        std::process::id()
    ));
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&tmp)
        .with_context(|| format!("creating {}", tmp.display()))?;
    let written = f.write_all(bytes).and_then(|()| f.sync_all());
    drop(f);
    // link() fails if the target exists: an existing key is never lost.
    let placed = written.and_then(|()| std::fs::hard_link(&tmp, path));
    let _ = std::fs::remove_file(&tmp);
    match placed {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
            return Err(Error::Usage(format!(
                "{} exists; refusing to replace a key file",
                path.display()
            ))
            .into());
        }
        Err(e) => return Err(e).with_context(|| format!("writing {}", path.display())),
    }
    std::fs::File::open(&dir)
        .and_then(|d| d.sync_all())
        .with_context(|| format!("syncing {}", dir.display()))?;
    Ok(())
}
