//! Who may do what on a hoard server.
//!
//! - [`access`]: roles, the paths a principal may use, and every
//!   authorization decision the server makes, as pure functions of a
//!   [`Principal`], a group and that group's owner. The server asks here
//!   and nowhere else.
//! - [`tokens`]: the API token store, a small file on the server's
//!   machine. A secret is shown once at creation and stored only as its
//!   SHA-256; verification compares in constant time. The file is read on
//!   every authentication, so a revocation holds for the next connection
//!   without a restart.
//! - [`users`]: people who log in to the web page, with a password
//!   stretched by Argon2id; read on every request of their sessions, so
//!   a removal or a new password ends those sessions at once.
//!
//! This crate knows nothing of sockets or of the datastore's layout.

pub mod access;
mod state_file;
pub mod tokens;
pub mod users;

pub use access::{Denied, GroupOwner, Principal, Role, Scope};
pub use state_file::AccessInfo;
pub use tokens::{AuthError, TokenInfo, TokenStore};
pub use users::{UserInfo, UserStore};
