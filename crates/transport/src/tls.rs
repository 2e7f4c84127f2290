//! TLS for both sides of the packet protocol (docs/security.md).
//!
//! The server keeps a certificate and key in its state directory,
//! creating a self-signed pair on first start; an operator may replace
//! them with a CA-signed pair. A client trusts a server either by its
//! certificate's SHA-256 fingerprint (pinned), or, with no pin, by the
//! usual chain check against the system's CAs and any extra CA file. A
//! pinned fingerprint replaces the chain and name checks entirely, but
//! never the handshake signature check: the server must still prove it
//! holds the key of the pinned certificate.

use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::{Arc, Mutex};

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};
use sha2::{Digest, Sha256};

/// File names in the server's state directory.
pub const CERT_FILE: &str = "cert.pem";
pub const KEY_FILE: &str = "key.pem";

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("{}: {source}", .path.display())]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{}: {reason}", .path.display())]
    Pem { path: PathBuf, reason: String },
    #[error("the certificate and key do not make a TLS configuration: {0}")]
    Config(#[from] rustls::Error),
    #[error("creating a self-signed certificate: {0}")]
    Generate(String),
}

/// SHA-256 of a certificate's DER bytes, shown as 32 colon-separated
/// hex pairs (the form PBS and browsers show).
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Fingerprint(pub [u8; 32]);

impl Fingerprint {
    pub fn of(cert_der: &[u8]) -> Fingerprint {
        Fingerprint(Sha256::digest(cert_der).into())
    }
}

impl fmt::Display for Fingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, b) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str(":")?;
            }
            write!(f, "{b:02x}")?;
        }
        Ok(())
    }
}

impl fmt::Debug for Fingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Fingerprint({self})")
    }
}

impl FromStr for Fingerprint {
    type Err = String;
    /// 64 hex digits, with or without colons, any case.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let hex: String = s.chars().filter(|c| *c != ':').collect();
        let bytes = hex::decode(hex.trim()).map_err(|_| {
            format!("invalid fingerprint {s:?}: expected 64 hex digits (colons allowed)")
        })?;
        let arr: [u8; 32] = bytes
            .try_into()
            .map_err(|_| format!("invalid fingerprint {s:?}: expected 32 bytes (64 hex digits)"))?;
        Ok(Fingerprint(arr))
    }
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// The server's TLS configuration and its certificate's fingerprint.
pub struct ServerIdentity {
    pub config: Arc<rustls::ServerConfig>,
    pub fingerprint: Fingerprint,
    pub cert_path: PathBuf,
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> TlsError + '_ {
    move |source| TlsError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Reads the certificate chain and key in `dir`, creating a self-signed
/// pair first if neither exists. ALPN offers version 2 of the packet
/// protocol and HTTP/1.1 (the version 1 upgrade).
pub fn load_or_create_identity(dir: &Path) -> Result<ServerIdentity, TlsError> {
    let cert_path = dir.join(CERT_FILE);
    let key_path = dir.join(KEY_FILE);
    if !cert_path.exists() && !key_path.exists() {
        create_self_signed(dir)?;
    }
    let chain = CertificateDer::pem_file_iter(&cert_path)
        .and_then(|it| it.collect::<Result<Vec<_>, _>>())
        .map_err(|e| TlsError::Pem {
            path: cert_path.clone(),
            reason: e.to_string(),
        })?;
    let Some(leaf) = chain.first() else {
        return Err(TlsError::Pem {
            path: cert_path,
            reason: "no certificate in the file".into(),
        });
    };
    let fingerprint = Fingerprint::of(leaf);
    let key = PrivateKeyDer::from_pem_file(&key_path).map_err(|e| TlsError::Pem {
        path: key_path.clone(),
        reason: e.to_string(),
    })?;
    let mut config = rustls::ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_single_cert(chain, key)?;
    config.alpn_protocols = vec![
        hoard_protocol::consts::ALPN_V2.to_vec(),
        b"http/1.1".to_vec(),
    ];
    Ok(ServerIdentity {
        config: Arc::new(config),
        fingerprint,
        cert_path,
    })
}

/// A self-signed certificate for `localhost`, this machine's host name
/// and the loopback addresses; clients pin it by fingerprint, so the
/// names matter only to clients that check them.
fn create_self_signed(dir: &Path) -> Result<(), TlsError> {
    {
        use std::os::unix::fs::DirBuilderExt;
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(io_err(dir))?;
    }
    let mut names = vec![
        "localhost".to_string(),
        "127.0.0.1".to_string(),
        "::1".to_string(),
    ];
    if let Ok(host) = std::fs::read_to_string("/etc/hostname") {
        let host = host.trim();
        if !host.is_empty() && host != "localhost" {
            names.push(host.to_string());
        }
    }
    let certified =
        rcgen::generate_simple_self_signed(names).map_err(|e| TlsError::Generate(e.to_string()))?;
    // The key first: a crash between the two leaves a key without a
    // certificate, which the next start reports instead of replacing.
    write_private(
        dir,
        KEY_FILE,
        certified.signing_key.serialize_pem().as_bytes(),
    )?;
    write_private(dir, CERT_FILE, certified.cert.pem().as_bytes())?;
    Ok(())
}

/// Temp file (owner-only), fsync, rename, fsync the directory.
fn write_private(dir: &Path, name: &str, data: &[u8]) -> Result<(), TlsError> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let dest = dir.join(name);
    let tmp = dir.join(format!(".{name}.tmp"));
    let result = (|| {
        // A leftover (or planted) temp name is removed, never written
        // through: the key is created fresh, owner-only.
        match std::fs::remove_file(&tmp) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e),
            _ => {}
        }
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&tmp)?;
        f.write_all(data)?;
        f.sync_all()?;
        std::fs::rename(&tmp, &dest)?;
        std::fs::File::open(dir)?.sync_all()
    })();
    result.map_err(io_err(&dest))
}

/// How a client decides to trust a server.
#[derive(Debug, Clone)]
pub enum Trust {
    /// Exactly this certificate; no chain or name check.
    Pinned(Fingerprint),
    /// A chain to the system's CAs, or to the CAs in this file, for the
    /// name connected to.
    Chain { extra_ca: Option<PathBuf> },
}

/// What the client saw of the server's certificate during a handshake,
/// so a refusal can say which fingerprint it was.
#[derive(Debug, Default)]
pub struct Seen(Mutex<Option<Fingerprint>>);

impl Seen {
    pub fn fingerprint(&self) -> Option<Fingerprint> {
        *self.0.lock().expect("lock poisoned")
    }
}

#[derive(Debug)]
struct Verifier {
    pin: Option<Fingerprint>,
    chain: Option<Arc<rustls::client::WebPkiServerVerifier>>,
    seen: Arc<Seen>,
    provider: Arc<CryptoProvider>,
}

impl ServerCertVerifier for Verifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let fp = Fingerprint::of(end_entity);
        *self.seen.0.lock().expect("lock poisoned") = Some(fp);
        if let Some(pin) = self.pin {
            return if fp == pin {
                Ok(ServerCertVerified::assertion())
            } else {
                Err(rustls::Error::General(format!(
                    "certificate fingerprint {fp} is not the pinned {pin}"
                )))
            };
        }
        match &self.chain {
            Some(v) => {
                v.verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now)
            }
            None => Err(rustls::Error::InvalidCertificate(
                rustls::CertificateError::UnknownIssuer,
            )),
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// A client configuration for `trust`, offering ALPN `hoard/2`, and the
/// record of the certificate its handshakes see.
pub fn client_config(trust: &Trust) -> Result<(Arc<rustls::ClientConfig>, Arc<Seen>), TlsError> {
    client_config_with_alpn(trust, vec![hoard_protocol::consts::ALPN_V2.to_vec()])
}

/// [`client_config`] offering `alpn` instead (none: an HTTP client).
pub fn client_config_with_alpn(
    trust: &Trust,
    alpn: Vec<Vec<u8>>,
) -> Result<(Arc<rustls::ClientConfig>, Arc<Seen>), TlsError> {
    let provider = provider();
    let seen = Arc::new(Seen::default());
    let (pin, chain) = match trust {
        Trust::Pinned(fp) => (Some(*fp), None),
        Trust::Chain { extra_ca } => (None, chain_verifier(extra_ca.as_deref(), &provider)?),
    };
    let verifier = Verifier {
        pin,
        chain,
        seen: seen.clone(),
        provider: provider.clone(),
    };
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(verifier))
        .with_no_client_auth();
    config.alpn_protocols = alpn;
    Ok((Arc::new(config), seen))
}

/// WebPKI verification against the system's CAs plus `extra_ca`; `None`
/// when there is no CA at all to check against.
fn chain_verifier(
    extra_ca: Option<&Path>,
    provider: &Arc<CryptoProvider>,
) -> Result<Option<Arc<rustls::client::WebPkiServerVerifier>>, TlsError> {
    let mut roots = rustls::RootCertStore::empty();
    let native = rustls_native_certs::load_native_certs();
    roots.add_parsable_certificates(native.certs);
    if let Some(path) = extra_ca {
        let certs = CertificateDer::pem_file_iter(path)
            .and_then(|it| it.collect::<Result<Vec<_>, _>>())
            .map_err(|e| TlsError::Pem {
                path: path.to_path_buf(),
                reason: e.to_string(),
            })?;
        for c in certs {
            roots.add(c).map_err(TlsError::Config)?;
        }
    }
    if roots.is_empty() {
        return Ok(None);
    }
    let v = rustls::client::WebPkiServerVerifier::builder_with_provider(
        Arc::new(roots),
        provider.clone(),
    )
    .build()
    .map_err(|e| TlsError::Generate(e.to_string()))?;
    Ok(Some(v))
}

/// The TLS server name for `host` (a DNS name or an IP address).
pub fn server_name(host: &str) -> Option<ServerName<'static>> {
    let host = host.trim_start_matches('[').trim_end_matches(']');
    ServerName::try_from(host.to_string()).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fingerprints_print_and_parse() {
        let fp = Fingerprint::of(b"cert");
        let text = fp.to_string();
        assert_eq!(text.len(), 95);
        assert_eq!(text.parse::<Fingerprint>().unwrap(), fp);
        assert_eq!(
            text.replace(':', "")
                .to_uppercase()
                .parse::<Fingerprint>()
                .unwrap(),
            fp
        );
        assert!("ab:cd".parse::<Fingerprint>().is_err());
        assert!("zz".repeat(32).parse::<Fingerprint>().is_err());
    }

    #[test]
    fn identity_is_created_once_and_kept() {
        let dir = tempfile::tempdir().unwrap();
        let a = load_or_create_identity(dir.path()).unwrap();
        let b = load_or_create_identity(dir.path()).unwrap();
        assert_eq!(a.fingerprint, b.fingerprint);
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(dir.path().join(KEY_FILE))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o077, 0, "the key is owner-only");
        // A key without its certificate is reported, never replaced.
        std::fs::remove_file(dir.path().join(CERT_FILE)).unwrap();
        assert!(load_or_create_identity(dir.path()).is_err());
    }
}
