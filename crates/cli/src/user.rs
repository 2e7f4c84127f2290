//! `hoard user add|passwd|remove|list`: the people who log in to the web
//! page, managed on the server's machine like tokens.

use std::io::IsTerminal;

use anyhow::Result;
use clap::{Args, Subcommand};
use hoard_auth::{AuthError, Role, Scope, UserStore};

use crate::admin_args::{AdminArgs, AdminError};

/// Where scripts pass a password (never on the command line, where
/// every user of the machine can read it).
const PASSWORD_ENV: &str = "HOARD_PASSWORD";

#[derive(Args)]
pub struct UserArgs {
    #[command(flatten)]
    admin: AdminArgs,
    #[command(subcommand)]
    command: UserCommand,
}

#[derive(Subcommand)]
enum UserCommand {
    /// Add a user; the password is typed twice (or taken from
    /// $HOARD_PASSWORD).
    Add {
        name: String,
        /// admin, backup or reader.
        #[arg(long)]
        role: Role,
        /// TYPE (vm) or TYPE/ID (vm/100) the user may see; repeatable;
        /// default everything.
        #[arg(long = "path")]
        paths: Vec<Scope>,
    },
    /// Set a user's password; their sessions end.
    Passwd { name: String },
    /// Remove a user; their sessions end.
    Remove { name: String },
    /// List users.
    List,
}

fn auth_error(e: AuthError) -> anyhow::Error {
    let code = match e {
        AuthError::NoUser(_) => 4,
        AuthError::UserExists(_) => 5,
        AuthError::BadName(_)
        | AuthError::AdminWithPaths
        | AuthError::WeakPassword { .. }
        | AuthError::LongPassword { .. } => 2,
        _ => 1,
    };
    AdminError::fail(code, e.to_string())
}

fn new_password() -> Result<String> {
    if let Ok(p) = std::env::var(PASSWORD_ENV) {
        return Ok(p);
    }
    if !std::io::stdin().is_terminal() {
        return Err(AdminError::fail(
            2,
            format!("a password is needed: set {PASSWORD_ENV} or run on a terminal"),
        ));
    }
    let first = rpassword::prompt_password("New password: ")?;
    if rpassword::prompt_password("Again: ")? != first {
        return Err(AdminError::fail(2, "the passwords differ"));
    }
    Ok(first)
}

pub fn run(args: UserArgs) -> Result<()> {
    let store = UserStore::new(&args.admin.state()?);
    match args.command {
        UserCommand::Add { name, role, paths } => {
            let password = new_password()?;
            store
                .add(&name, role, &paths, &password)
                .map_err(auth_error)?;
            args.admin.emit(
                &serde_json::json!({ "added": name, "role": role.as_str() }),
                &[format!("user {name} (role {role}) added")],
            )?;
        }
        UserCommand::Passwd { name } => {
            let password = new_password()?;
            store.set_password(&name, &password).map_err(auth_error)?;
            args.admin.emit(
                &serde_json::json!({ "changed": name }),
                &[format!(
                    "password of {name} changed; their sessions have ended"
                )],
            )?;
        }
        UserCommand::Remove { name } => {
            store.remove(&name).map_err(auth_error)?;
            args.admin.emit(
                &serde_json::json!({ "removed": name }),
                &[format!("user {name} removed; their sessions have ended")],
            )?;
        }
        UserCommand::List => {
            let list = store.list().map_err(auth_error)?;
            let lines: Vec<String> = list
                .iter()
                .map(|u| {
                    let paths = if u.paths.is_empty() {
                        "/".to_string()
                    } else {
                        u.paths.join(",")
                    };
                    format!("{:<24} {:<7} {:<30} {}", u.name, u.role, paths, u.created)
                })
                .collect();
            args.admin.emit(&serde_json::to_value(&list)?, &lines)?;
        }
    }
    Ok(())
}
