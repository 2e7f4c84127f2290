//! Roles, scopes and the authorization decisions (docs/security.md).
//!
//! | role | upload / create snapshots | read indexes, download chunks | list |
//! |---|---|---|---|
//! | `admin` | any group | any group | all |
//! | `backup` | groups in its paths that it owns (a new group becomes its own) | groups in its paths that it owns | groups in its paths that it owns |
//! | `reader` | never | groups in its paths | groups in its paths |
//!
//! Nothing here does I/O: the caller looks up the group's owner and
//! passes it in.

use std::fmt;
use std::str::FromStr;

use hoard_types::{BackupGroup, BackupType};

/// What a principal is allowed to do at most.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Role {
    /// Everything, in every group.
    Admin,
    /// Create snapshots in the groups it owns, and read those groups back
    /// (the base of an incremental backup, its own restores).
    Backup,
    /// List and restore; never write.
    Reader,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Admin => "admin",
            Role::Backup => "backup",
            Role::Reader => "reader",
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Role {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "admin" => Ok(Role::Admin),
            "backup" => Ok(Role::Backup),
            "reader" => Ok(Role::Reader),
            other => Err(format!(
                "unknown role {other:?} (expected admin, backup or reader)"
            )),
        }
    }
}

/// The part of the datastore a token may use: everything, one backup
/// type, or one group.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Scope {
    All,
    Type(BackupType),
    Group(BackupGroup),
}

impl Scope {
    pub fn covers(&self, group: &BackupGroup) -> bool {
        match self {
            Scope::All => true,
            Scope::Type(t) => *t == group.ty,
            Scope::Group(g) => g == group,
        }
    }
}

impl fmt::Display for Scope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Scope::All => f.write_str("/"),
            Scope::Type(t) => write!(f, "{t}"),
            Scope::Group(g) => write!(f, "{g}"),
        }
    }
}

impl FromStr for Scope {
    type Err = String;
    /// `/` (everything), `vm` (a type) or `vm/100` (a group).
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || format!("invalid path {s:?}: expected / (everything), TYPE or TYPE/ID");
        match s.trim_end_matches('/') {
            "" if !s.is_empty() => Ok(Scope::All),
            t if !t.contains('/') => t.parse().map(Scope::Type).map_err(|_| bad()),
            g => g.parse().map(Scope::Group).map_err(|_| bad()),
        }
    }
}

/// Who owns a group, as the caller found it on disk.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GroupOwner {
    /// The group does not exist yet: whoever creates it owns it.
    New,
    /// The group exists without an owner (written before owners were
    /// recorded): only an admin writes to it until an owner is assigned.
    Unowned,
    Owned(String),
}

/// The authenticated party of a connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    /// A token's name, or a name starting with `@` for principals that
    /// are not tokens (they can never collide with a token).
    pub name: String,
    pub role: Role,
    /// Empty means everything.
    pub scopes: Vec<Scope>,
}

/// Why a request was refused; the message names what was asked.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("permission denied: {0}")]
pub struct Denied(pub String);

/// Name of the principal of anonymous version 1 sessions on the plain
/// listener (`hoard serve --listen-v1`).
pub const ANONYMOUS_V1: &str = "@v1";

impl Principal {
    pub fn new(name: impl Into<String>, role: Role, scopes: Vec<Scope>) -> Principal {
        Principal {
            name: name.into(),
            role,
            scopes,
        }
    }

    /// Whether `group` lies within this principal's paths.
    pub fn covers(&self, group: &BackupGroup) -> bool {
        self.scopes.is_empty() || self.scopes.iter().any(|s| s.covers(group))
    }

    fn is_owner(&self, owner: &GroupOwner) -> bool {
        matches!(owner, GroupOwner::Owned(o) if *o == self.name)
    }

    /// May upload chunks at all (before any snapshot names a group).
    pub fn may_upload(&self) -> Result<(), Denied> {
        match self.role {
            Role::Admin | Role::Backup => Ok(()),
            Role::Reader => Err(self.denied("upload chunks")),
        }
    }

    /// May create a new snapshot in `group`. `Ok(true)` means the group is
    /// new and becomes this principal's.
    pub fn may_create(&self, group: &BackupGroup, owner: &GroupOwner) -> Result<bool, Denied> {
        let what = || format!("create a snapshot in {group}");
        match self.role {
            Role::Reader => Err(self.denied(&what())),
            Role::Admin => Ok(*owner == GroupOwner::New),
            Role::Backup if !self.covers(group) => Err(self.outside(&what(), group)),
            Role::Backup => match owner {
                GroupOwner::New => Ok(true),
                GroupOwner::Owned(o) if *o == self.name => Ok(false),
                GroupOwner::Owned(o) => Err(Denied(format!(
                    "{} may not {}: the group belongs to {o}",
                    self.name,
                    what()
                ))),
                GroupOwner::Unowned => Err(Denied(format!(
                    "{} may not {}: the group has no owner yet (an admin assigns one with `hoard owner {group} NAME`)",
                    self.name,
                    what()
                ))),
            },
        }
    }

    /// May read `group`'s indexes and the chunks they list.
    pub fn may_read(&self, group: &BackupGroup, owner: &GroupOwner) -> Result<(), Denied> {
        let what = || format!("read {group}");
        match self.role {
            Role::Admin => Ok(()),
            _ if !self.covers(group) => Err(self.outside(&what(), group)),
            Role::Reader => Ok(()),
            Role::Backup if self.is_owner(owner) => Ok(()),
            Role::Backup => Err(Denied(format!(
                "{} may not {}: a backup token reads back only the groups it owns",
                self.name,
                what()
            ))),
        }
    }

    /// Whether `group` shows in this principal's snapshot list.
    pub fn may_list(&self, group: &BackupGroup, owner: &GroupOwner) -> bool {
        self.may_read(group, owner).is_ok()
    }

    /// Whether chunk references and downloads are unrestricted. Everyone
    /// else may reference only chunks it uploaded on the connection or
    /// read in an index of a group it may read, and download only the
    /// latter (docs/security.md, "Known chunks").
    pub fn sees_every_chunk(&self) -> bool {
        self.role == Role::Admin
    }

    fn denied(&self, what: &str) -> Denied {
        Denied(format!("{} (role {}) may not {what}", self.name, self.role))
    }

    fn outside(&self, what: &str, group: &BackupGroup) -> Denied {
        Denied(format!(
            "{} may not {what}: {group} is outside its paths",
            self.name
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn g(s: &str) -> BackupGroup {
        s.parse().unwrap()
    }

    fn owned(s: &str) -> GroupOwner {
        GroupOwner::Owned(s.into())
    }

    #[test]
    fn scopes_parse_and_cover() {
        assert_eq!("/".parse::<Scope>().unwrap(), Scope::All);
        assert_eq!("vm".parse::<Scope>().unwrap(), Scope::Type(BackupType::Vm));
        assert_eq!(
            "vm/100".parse::<Scope>().unwrap(),
            Scope::Group(g("vm/100"))
        );
        assert!("".parse::<Scope>().is_err());
        assert!("disk".parse::<Scope>().is_err());
        assert!("vm/../x".parse::<Scope>().is_err());
        assert!(Scope::Type(BackupType::Vm).covers(&g("vm/1")));
        assert!(!Scope::Type(BackupType::Vm).covers(&g("ct/1")));
        assert!(!Scope::Group(g("vm/1")).covers(&g("vm/10")));
        for s in ["/", "vm", "host/web1"] {
            assert_eq!(s.parse::<Scope>().unwrap().to_string(), s);
        }
    }

    #[test]
    fn backup_tokens_write_and_read_only_what_they_own() {
        let p = Principal::new("b", Role::Backup, vec![Scope::Type(BackupType::Vm)]);
        assert_eq!(p.may_create(&g("vm/1"), &GroupOwner::New), Ok(true));
        assert_eq!(p.may_create(&g("vm/1"), &owned("b")), Ok(false));
        assert!(p.may_create(&g("vm/1"), &owned("other")).is_err());
        assert!(p.may_create(&g("vm/1"), &GroupOwner::Unowned).is_err());
        assert!(p.may_create(&g("ct/1"), &GroupOwner::New).is_err());
        assert!(p.may_read(&g("vm/1"), &owned("b")).is_ok());
        assert!(p.may_read(&g("vm/1"), &owned("other")).is_err());
        assert!(p.may_read(&g("ct/1"), &owned("b")).is_err());
        assert!(p.may_upload().is_ok());
        assert!(!p.sees_every_chunk());
    }

    #[test]
    fn readers_never_write() {
        let p = Principal::new("r", Role::Reader, vec![Scope::Group(g("vm/1"))]);
        assert!(p.may_upload().is_err());
        assert!(p.may_create(&g("vm/1"), &GroupOwner::New).is_err());
        assert!(p.may_read(&g("vm/1"), &owned("someone")).is_ok());
        assert!(p.may_read(&g("vm/2"), &owned("someone")).is_err());
        assert!(p.may_list(&g("vm/1"), &GroupOwner::Unowned));
    }

    #[test]
    fn admins_do_everything() {
        let p = Principal::new("a", Role::Admin, vec![]);
        assert_eq!(p.may_create(&g("vm/1"), &owned("x")), Ok(false));
        assert_eq!(p.may_create(&g("vm/1"), &GroupOwner::New), Ok(true));
        assert!(p.may_create(&g("vm/1"), &GroupOwner::Unowned).is_ok());
        assert!(p.may_read(&g("ct/9"), &owned("x")).is_ok());
        assert!(p.sees_every_chunk());
    }

    #[test]
    fn roles_parse() {
        for r in [Role::Admin, Role::Backup, Role::Reader] {
            assert_eq!(r.as_str().parse::<Role>().unwrap(), r);
        }
        assert!("root".parse::<Role>().is_err());
    }
}
