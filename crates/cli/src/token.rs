//! `hoard token create|list|revoke`, `hoard cert fingerprint` and `hoard
//! owner`: the server's access configuration, managed on its machine
//! like the maintenance commands (whoever can write the datastore
//! directory administers the server).

use anyhow::Result;
use clap::{Args, Subcommand};
use hoard_auth::{AuthError, Role, Scope, TokenStore};
use hoard_types::BackupGroup;

use crate::admin_args::{AdminArgs, AdminError, ds_error};

#[derive(Args)]
pub struct TokenArgs {
    #[command(flatten)]
    admin: AdminArgs,
    #[command(subcommand)]
    command: TokenCommand,
}

#[derive(Subcommand)]
enum TokenCommand {
    /// Create a token and print NAME:SECRET (shown this once only).
    Create {
        name: String,
        /// admin, backup or reader.
        #[arg(long)]
        role: Role,
        /// TYPE (vm) or TYPE/ID (vm/100) the token may use; repeatable;
        /// default everything.
        #[arg(long = "path")]
        paths: Vec<Scope>,
    },
    /// List tokens (never their secrets).
    List,
    /// Revoke a token; its new connections fail at once.
    Revoke { name: String },
}

fn auth_error(e: AuthError) -> anyhow::Error {
    let code = match e {
        AuthError::NotFound(_) => 4,
        AuthError::Exists(_) => 5,
        AuthError::BadName(_) | AuthError::AdminWithPaths | AuthError::Malformed => 2,
        _ => 1,
    };
    AdminError::fail(code, e.to_string())
}

fn store(admin: &AdminArgs) -> Result<TokenStore> {
    Ok(TokenStore::new(&admin.state()?))
}

pub fn run(args: TokenArgs) -> Result<()> {
    let store = store(&args.admin)?;
    match args.command {
        TokenCommand::Create { name, role, paths } => {
            let token = store.create(&name, role, &paths).map_err(auth_error)?;
            if args.admin.json() {
                crate::client_args::print_json(
                    &serde_json::json!({ "name": name, "token": token }),
                )?;
            } else {
                outln!("{token}")?;
                if !args.admin.quiet {
                    eprintln!(
                        "Token {name} (role {role}) created. Keep the line above: its secret is shown only this once."
                    );
                }
            }
        }
        TokenCommand::List => {
            let list = store.list().map_err(auth_error)?;
            let lines: Vec<String> = list
                .iter()
                .map(|t| {
                    let paths = if t.paths.is_empty() {
                        "/".to_string()
                    } else {
                        t.paths.join(",")
                    };
                    format!("{:<24} {:<7} {:<30} {}", t.name, t.role, paths, t.created)
                })
                .collect();
            args.admin.emit(&serde_json::to_value(&list)?, &lines)?;
        }
        TokenCommand::Revoke { name } => {
            store.revoke(&name).map_err(auth_error)?;
            args.admin.emit(
                &serde_json::json!({ "revoked": name }),
                &[format!("token {name} revoked")],
            )?;
        }
    }
    Ok(())
}

#[derive(Args)]
pub struct CertArgs {
    #[command(flatten)]
    admin: AdminArgs,
    #[command(subcommand)]
    command: CertCommand,
}

#[derive(Subcommand)]
enum CertCommand {
    /// Print the SHA-256 fingerprint of the server's certificate (created
    /// first if the server has none yet).
    Fingerprint,
}

pub fn run_cert(args: CertArgs) -> Result<()> {
    let CertCommand::Fingerprint = args.command;
    let dir = args.admin.state()?;
    let identity = hoard_transport::tls::load_or_create_identity(&dir)
        .map_err(|e| AdminError::fail(1, e.to_string()))?;
    outln!("{}", identity.fingerprint)?;
    Ok(())
}

#[derive(Args)]
pub struct OwnerArgs {
    #[command(flatten)]
    admin: AdminArgs,
    /// The group, TYPE/ID.
    group: String,
    /// Make this token the group's owner (an admin's assignment); without
    /// it, print the owner.
    new_owner: Option<String>,
}

pub fn run_owner(args: OwnerArgs) -> Result<()> {
    let group: BackupGroup = args
        .group
        .trim_end_matches('/')
        .parse()
        .map_err(|e| AdminError::fail(2, format!("{:?}: {e}", args.group)))?;
    let ds = args.admin.open()?;
    match args.new_owner {
        Some(owner) => {
            hoard_auth::tokens::check_name(&owner).map_err(auth_error)?;
            ds.set_group_owner(&group, &owner).map_err(|e| match e {
                hoard_datastore::Error::Owner { .. } => AdminError::fail(4, e.to_string()),
                e => ds_error(e),
            })?;
            args.admin.emit(
                &serde_json::json!({ "group": group.to_string(), "owner": owner }),
                &[format!("{group} now belongs to {owner}")],
            )?;
        }
        None => {
            let owner = ds.group_owner(&group).map_err(ds_error)?;
            let line = match &owner {
                Some(o) => o.clone(),
                None => format!("{group} has no owner"),
            };
            args.admin.emit(
                &serde_json::json!({ "group": group.to_string(), "owner": owner }),
                &[line],
            )?;
        }
    }
    Ok(())
}
