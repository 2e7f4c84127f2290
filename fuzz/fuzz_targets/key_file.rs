//! Key material read from files and typed-back paper: any bytes give a
//! key file, a master key file, a public key, a recovery result or an
//! error, never a panic; KDF parameters are bounded before use.
#![no_main]

use hoard_codec::{from_paper, KeyFile, MasterPublic, MasterSecret, MasterSecretFile};
use libfuzzer_sys::fuzz_target;
use std::sync::OnceLock;

/// Unlock only files whose KDF is cheap: the parser's bounds allow 4 GiB
/// and 100 passes, which are valid but would make the fuzzer crawl.
fn cheap(kdf: Option<&hoard_codec::keyfile::Kdf>) -> bool {
    kdf.is_none_or(|k| k.params.m_kib <= 1024 && k.params.t <= 4)
}

fn master() -> &'static MasterSecret {
    static MASTER: OnceLock<MasterSecret> = OnceLock::new();
    MASTER.get_or_init(MasterSecret::generate)
}

fuzz_target!(|data: &[u8]| {
    if let Ok(file) = KeyFile::parse(data) {
        let _ = file.fingerprint();
        let _ = file.to_json();
        if cheap(file.kdf()) {
            let _ = file.unlock(Some("fuzz passphrase"));
            let _ = file.unlock(None);
        }
        let _ = hoard_codec::paper(&file);
    }
    if let Ok(file) = MasterSecretFile::parse(data) {
        let _ = file.to_json();
        if !file.needs_passphrase() {
            let _ = file.unlock(None);
        }
    }
    if let Ok(text) = std::str::from_utf8(data) {
        if let Ok(file) = from_paper(text) {
            if cheap(file.kdf()) {
                let _ = file.unlock(Some("fuzz passphrase"));
            }
        }
        let _ = MasterPublic::parse(text);
    }
    let _ = master().unwrap(data);
});
