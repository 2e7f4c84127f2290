//! Fingerprints of servers the user confirmed, like SSH's known_hosts:
//! `$XDG_CONFIG_HOME/hoard/known_servers` (`~/.config/hoard/…`), one
//! `SERVER FINGERPRINT` line per server, as the user named the server.

use std::path::{Path, PathBuf};

use hoard_client::Fingerprint;

pub fn path() -> Option<PathBuf> {
    dirs::config_dir().map(|d| d.join("hoard").join("known_servers"))
}

/// The fingerprint remembered for `server` in the file at `path`.
pub fn lookup(path: &Path, server: &str) -> Option<Fingerprint> {
    let text = std::fs::read_to_string(path).ok()?;
    text.lines().find_map(|line| {
        let (name, fp) = line.trim().split_once(char::is_whitespace)?;
        (name == server).then(|| fp.trim().parse().ok()).flatten()
    })
}

/// Records `fp` for `server`, replacing an older line for it; written
/// through a temp file and a rename, so the file is never half-written.
pub fn remember(path: &Path, server: &str, fp: &Fingerprint) -> std::io::Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir)?;
    let old = std::fs::read_to_string(path).unwrap_or_default();
    let mut text: String = old
        .lines()
        .filter(|l| l.split_whitespace().next() != Some(server))
        .map(|l| format!("{l}\n"))
        .collect();
    text.push_str(&format!("{server} {fp}\n"));
    let tmp = dir.join(".known_servers.tmp");
    std::fs::write(&tmp, text)?;
    std::fs::File::open(&tmp)?.sync_all()?;
    std::fs::rename(&tmp, path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn remember_and_look_up() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub/known_servers");
        let a: Fingerprint = "11".repeat(32).parse().unwrap();
        let b: Fingerprint = "22".repeat(32).parse().unwrap();
        assert_eq!(lookup(&path, "h:1"), None);
        remember(&path, "h:1", &a).unwrap();
        remember(&path, "h:2", &b).unwrap();
        assert_eq!(lookup(&path, "h:1"), Some(a));
        remember(&path, "h:1", &b).unwrap();
        assert_eq!(lookup(&path, "h:1"), Some(b));
        assert_eq!(lookup(&path, "h:2"), Some(b));
        assert_eq!(std::fs::read_to_string(&path).unwrap().lines().count(), 2);
    }
}
