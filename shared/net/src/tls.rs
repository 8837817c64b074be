//! TLS setup: rustls configs from PEM files, and the demo CA + certificate generator.
//!
//! - [`server_config`]: a certificate chain and key from PEM files → rustls `ServerConfig`
//!   (c2s STARTTLS and direct TLS, s2s, farm links).
//! - [`client_config`]: a rustls `ClientConfig` trusting exactly one CA file (tests, farm links).
//! - [`ensure_dev_certs`]: a local CA and a certificate for the domain, generated into the data
//!   dir on first start (the demo farm, `jabberfarm up`). Every node uses the same certificate:
//!   clients verify a slave against the domain, not its address (DESIGN.md D1).
//!
//! Everything uses the ring provider explicitly, so no process-wide default has to be installed.

use std::fs;
use std::io::{self, Write};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, SanType,
};
use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::ServerCertVerifier;
use rustls::crypto::CryptoProvider;
use rustls::{ClientConfig, InconsistentKeys, RootCertStore, ServerConfig};
use rustls_pki_types::pem::{self, PemObject};
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};

/// ALPN protocol id of XMPP client connections over direct TLS (XEP-0368).
pub const ALPN_XMPP_CLIENT: &[u8] = b"xmpp-client";

/// Validity of the generated CA.
const CA_VALIDITY: Duration = Duration::from_secs(10 * 365 * 24 * 3600);
/// Validity of the generated leaf; at most 825 days, which Apple platforms require of any TLS
/// server certificate. An expired leaf is regenerated on the next start.
const LEAF_VALIDITY: Duration = Duration::from_secs(825 * 24 * 3600);
/// Start of validity before "now", for clocks that lag a little.
const BACKDATE: Duration = Duration::from_secs(3600);

/// Where [`ensure_dev_certs`] put its files.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DevCerts {
    /// The CA certificate: what clients are told to trust.
    pub ca: PathBuf,
    /// The leaf certificate followed by the CA certificate.
    pub cert: PathBuf,
    /// The leaf's private key (mode 0600).
    pub key: PathBuf,
}

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("{path}: file does not exist")]
    Missing { path: PathBuf },
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("{path}: not valid PEM: {detail}")]
    BadPem { path: PathBuf, detail: String },
    #[error("{path}: no certificate in it (expected a PEM block \"BEGIN CERTIFICATE\")")]
    NoCertificate { path: PathBuf },
    #[error(
        "{path}: no private key in it (expected a PEM block \"BEGIN PRIVATE KEY\", \
         \"BEGIN EC PRIVATE KEY\" or \"BEGIN RSA PRIVATE KEY\")"
    )]
    NoKey { path: PathBuf },
    #[error("{path}: unusable private key: {detail}")]
    BadKey { path: PathBuf, detail: String },
    #[error("{path}: unusable certificate: {detail}")]
    BadCertificate { path: PathBuf, detail: String },
    #[error("the private key in {key} does not match the certificate in {cert}")]
    KeyMismatch { cert: PathBuf, key: PathBuf },
    #[error("domain {domain:?} cannot be put in a certificate: {detail}")]
    InvalidDomain { domain: String, detail: String },
    #[error("generating the demo certificates failed: {0}")]
    Generate(#[from] rcgen::Error),
    #[error("TLS setup failed: {0}")]
    Rustls(#[from] rustls::Error),
}

/// Generates, only when missing, a local CA (`ca.pem`, `ca-key.pem`, CN "jabberfarm demo CA
/// for <domain>") and a certificate for the domain signed by it (`cert.pem`: leaf then CA;
/// `key.pem`) into `dir`. Key files get mode 0600. SANs: the domain, `*.domain`, 127.0.0.1, ::1
/// and `extra_ips`.
///
/// Existing files are left alone when the leaf still verifies against `ca.pem` for the domain
/// and every wanted address, is not expired and matches `key.pem`. Otherwise a new leaf is
/// signed, by the existing CA if it can still vouch for this domain, else by a new CA (clients
/// that trusted the old one must then be given the new `ca.pem`).
pub fn ensure_dev_certs(
    dir: &Path,
    domain: &str,
    extra_ips: &[IpAddr],
) -> Result<DevCerts, TlsError> {
    // Nodes started together as separate processes on a fresh data dir would otherwise each
    // generate a CA and overwrite the others' files: one at a time, under a lock file.
    fs::create_dir_all(dir).map_err(|source| io_error(dir, source))?;
    let lock_path = dir.join(".generate.lock");
    let lock = fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&lock_path)
        .map_err(|source| io_error(&lock_path, source))?;
    lock.lock().map_err(|source| io_error(&lock_path, source))?;
    let result = ensure_dev_certs_locked(dir, domain, extra_ips);
    let _ = lock.unlock();
    result
}

fn ensure_dev_certs_locked(
    dir: &Path,
    domain: &str,
    extra_ips: &[IpAddr],
) -> Result<DevCerts, TlsError> {
    let out = DevCerts {
        ca: dir.join("ca.pem"),
        cert: dir.join("cert.pem"),
        key: dir.join("key.pem"),
    };
    let ca_key_path = dir.join("ca-key.pem");
    let mut names = vec![server_name(domain)?];
    let mut ips = vec![
        IpAddr::V4(Ipv4Addr::LOCALHOST),
        IpAddr::V6(Ipv6Addr::LOCALHOST),
    ];
    for ip in extra_ips {
        if !ips.contains(ip) {
            ips.push(*ip);
        }
    }
    names.extend(ips.iter().map(|ip| ServerName::IpAddress((*ip).into())));

    match current_leaf_is_usable(&out, &names) {
        Ok(()) => return Ok(out),
        Err(reason) => tracing::info!(
            dir = %dir.display(),
            "generating a demo certificate for {domain}: {reason}"
        ),
    }
    fs::create_dir_all(dir).map_err(|source| io_error(dir, source))?;

    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    let leaf_params = leaf_params(domain, &ips, now)?;
    let leaf_key = KeyPair::generate()?;

    // Reuse the CA if there is one that still vouches for this domain: clients may trust it.
    if ca_key_path.exists() && out.ca.exists() {
        match reuse_ca(&out.ca, &ca_key_path, domain) {
            Ok(issuer) => {
                let leaf = leaf_params.signed_by(&leaf_key, &issuer)?;
                match verify_chain(&out.ca, leaf.der(), &[], &names) {
                    Ok(()) => {
                        write_leaf(&out, &leaf_key, &leaf.pem())?;
                        return Ok(out);
                    }
                    Err(e) => tracing::warn!(
                        "{}: cannot sign for {domain} ({e}); generating a new CA",
                        out.ca.display()
                    ),
                }
            }
            Err(e) => tracing::warn!("{e}; generating a new CA"),
        }
    }

    let ca_key = KeyPair::generate()?;
    let mut ca_params = ca_params(domain);
    set_validity(&mut ca_params, now, CA_VALIDITY);
    let ca_cert = ca_params.self_signed(&ca_key)?;
    let issuer = Issuer::new(ca_params, ca_key);
    let leaf = leaf_params.signed_by(&leaf_key, &issuer)?;
    write_private(&ca_key_path, issuer.key().serialize_pem().as_bytes())?;
    write_file(&out.ca, ca_cert.pem().as_bytes(), false)?;
    write_leaf(&out, &leaf_key, &leaf.pem())?;
    Ok(out)
}

/// Loads a PEM certificate chain (leaf first) and its private key into a server config: ring
/// provider, TLS 1.2 and 1.3, no client certificates, ALPN `xmpp-client` (XEP-0368) offered.
/// A client that sends no ALPN is served too; one that offers only other protocols is refused
/// by rustls (RFC 7301 §3.2, `no_application_protocol`).
pub fn server_config(cert: &Path, key: &Path) -> Result<Arc<ServerConfig>, TlsError> {
    let chain = load_certs(cert)?;
    let key_der = load_key(key)?;
    let provider = provider();
    // Parse the key on its own first, so an unusable key is reported against its file.
    provider
        .key_provider
        .load_private_key(key_der.clone_key())
        .map_err(|e| TlsError::BadKey {
            path: key.to_owned(),
            detail: e.to_string(),
        })?;
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_single_cert(chain, key_der)
        .map_err(|e| match e {
            rustls::Error::InconsistentKeys(InconsistentKeys::KeyMismatch) => {
                TlsError::KeyMismatch {
                    cert: cert.to_owned(),
                    key: key.to_owned(),
                }
            }
            other => TlsError::BadCertificate {
                path: cert.to_owned(),
                detail: other.to_string(),
            },
        })?;
    config.alpn_protocols = vec![ALPN_XMPP_CLIENT.to_vec()];
    Ok(Arc::new(config))
}

/// A client config (ring, TLS 1.2 and 1.3, no client certificate, no ALPN) trusting exactly the
/// CA certificates in the PEM file `ca`.
pub fn client_config(ca: &Path) -> Result<Arc<ClientConfig>, TlsError> {
    let roots = root_store(ca)?;
    let config = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(Arc::new(config))
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn root_store(ca: &Path) -> Result<RootCertStore, TlsError> {
    let mut roots = RootCertStore::empty();
    for cert in load_certs(ca)? {
        roots.add(cert).map_err(|e| TlsError::BadCertificate {
            path: ca.to_owned(),
            detail: e.to_string(),
        })?;
    }
    Ok(roots)
}

fn load_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|e| pem_error(path, e))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| pem_error(path, e))?;
    if certs.is_empty() {
        return Err(TlsError::NoCertificate {
            path: path.to_owned(),
        });
    }
    Ok(certs)
}

fn load_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    PrivateKeyDer::from_pem_file(path).map_err(|e| match e {
        pem::Error::NoItemsFound => TlsError::NoKey {
            path: path.to_owned(),
        },
        other => pem_error(path, other),
    })
}

fn pem_error(path: &Path, e: pem::Error) -> TlsError {
    match e {
        pem::Error::Io(source) => io_error(path, source),
        other => TlsError::BadPem {
            path: path.to_owned(),
            detail: other.to_string(),
        },
    }
}

fn io_error(path: &Path, source: io::Error) -> TlsError {
    if source.kind() == io::ErrorKind::NotFound {
        TlsError::Missing {
            path: path.to_owned(),
        }
    } else {
        TlsError::Io {
            path: path.to_owned(),
            source,
        }
    }
}

fn server_name(domain: &str) -> Result<ServerName<'static>, TlsError> {
    ServerName::try_from(domain.to_owned()).map_err(|e| TlsError::InvalidDomain {
        domain: domain.to_owned(),
        detail: e.to_string(),
    })
}

/// Why the current files cannot be kept, or `Ok` if they can.
fn current_leaf_is_usable(out: &DevCerts, names: &[ServerName<'static>]) -> Result<(), TlsError> {
    server_config(&out.cert, &out.key)?;
    let chain = load_certs(&out.cert)?;
    let (leaf, intermediates) = chain.split_first().ok_or_else(|| TlsError::NoCertificate {
        path: out.cert.clone(),
    })?;
    verify_chain(&out.ca, leaf, intermediates, names).map_err(|e| match e {
        TlsError::Rustls(e) => TlsError::BadCertificate {
            path: out.cert.clone(),
            detail: format!("does not verify against {}: {e}", out.ca.display()),
        },
        other => other,
    })
}

/// Checks `leaf` (with `intermediates`) against the CA file, now, for every one of `names`.
fn verify_chain(
    ca: &Path,
    leaf: &CertificateDer<'_>,
    intermediates: &[CertificateDer<'_>],
    names: &[ServerName<'static>],
) -> Result<(), TlsError> {
    let verifier =
        WebPkiServerVerifier::builder_with_provider(Arc::new(root_store(ca)?), provider())
            .build()
            .map_err(|e| TlsError::BadCertificate {
                path: ca.to_owned(),
                detail: e.to_string(),
            })?;
    for name in names {
        verifier.verify_server_cert(leaf, intermediates, name, &[], UnixTime::now())?;
    }
    Ok(())
}

/// The CA's parameters. Only its name, key usages and key-id method matter for signing, so an
/// existing CA is rebuilt from them and its stored key without parsing its certificate.
fn ca_params(domain: &str) -> CertificateParams {
    let mut params = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(
        DnType::CommonName,
        format!("jabberfarm demo CA for {domain}"),
    );
    params.distinguished_name = dn;
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    params
}

fn reuse_ca(ca: &Path, ca_key: &Path, domain: &str) -> Result<Issuer<'static, KeyPair>, TlsError> {
    let pem = fs::read_to_string(ca_key).map_err(|source| io_error(ca_key, source))?;
    let key = KeyPair::from_pem(&pem).map_err(|e| TlsError::BadKey {
        path: ca_key.to_owned(),
        detail: e.to_string(),
    })?;
    // Cheap sanity check before signing: the CA file must at least hold a certificate.
    load_certs(ca)?;
    Ok(Issuer::new(ca_params(domain), key))
}

fn leaf_params(domain: &str, ips: &[IpAddr], now: Duration) -> Result<CertificateParams, TlsError> {
    let dns = |name: String| {
        name.clone()
            .try_into()
            .map(SanType::DnsName)
            .map_err(|e: rcgen::Error| TlsError::InvalidDomain {
                domain: name,
                detail: e.to_string(),
            })
    };
    let mut params = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, domain);
    params.distinguished_name = dn;
    params.subject_alt_names = vec![dns(domain.to_owned())?, dns(format!("*.{domain}"))?];
    params
        .subject_alt_names
        .extend(ips.iter().map(|ip| SanType::IpAddress(*ip)));
    params.is_ca = IsCa::ExplicitNoCa;
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    // Client auth too: farm links may present the same certificate as clients.
    params.extended_key_usages = vec![
        ExtendedKeyUsagePurpose::ServerAuth,
        ExtendedKeyUsagePurpose::ClientAuth,
    ];
    params.use_authority_key_identifier_extension = true;
    set_validity(&mut params, now, LEAF_VALIDITY);
    Ok(params)
}

/// Valid from a little before `now` (since the Unix epoch) for `validity`. Built from
/// `date_time_ymd` because rcgen does not re-export the `time` crate.
fn set_validity(params: &mut CertificateParams, now: Duration, validity: Duration) {
    let epoch = rcgen::date_time_ymd(1970, 1, 1);
    params.not_before = epoch + now.saturating_sub(BACKDATE);
    params.not_after = epoch + (now + validity);
}

fn write_leaf(out: &DevCerts, key: &KeyPair, leaf_pem: &str) -> Result<(), TlsError> {
    let ca_pem = fs::read_to_string(&out.ca).map_err(|source| io_error(&out.ca, source))?;
    // Key first: a crash between the two writes leaves a mismatch, which the next start repairs.
    write_private(&out.key, key.serialize_pem().as_bytes())?;
    write_file(&out.cert, format!("{leaf_pem}{ca_pem}").as_bytes(), false)
}

fn write_private(path: &Path, contents: &[u8]) -> Result<(), TlsError> {
    write_file(path, contents, true)
}

/// Writes through a temporary file and a rename, so readers never see half a file. `private`
/// files are created with mode 0600 (owner only).
fn write_file(path: &Path, contents: &[u8], private: bool) -> Result<(), TlsError> {
    let mut tmp_name = path.file_name().unwrap_or_default().to_os_string();
    tmp_name.push(".tmp");
    let tmp = path.with_file_name(tmp_name);
    let _ = fs::remove_file(&tmp);
    let mut options = fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(if private { 0o600 } else { 0o644 });
    }
    #[cfg(not(unix))]
    let _ = private;
    let mut file = options
        .open(&tmp)
        .map_err(|source| io_error(&tmp, source))?;
    file.write_all(contents)
        .and_then(|()| file.sync_all())
        .map_err(|source| io_error(&tmp, source))?;
    fs::rename(&tmp, path).map_err(|source| io_error(path, source))
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// A full TLS handshake over an in-memory pipe; returns the negotiated ALPN protocol.
    async fn handshake(
        server: Arc<ServerConfig>,
        client: Arc<ClientConfig>,
        name: &str,
    ) -> Result<Option<Vec<u8>>, io::Error> {
        let (c, s) = tokio::io::duplex(16 * 1024);
        let acceptor = tokio_rustls::TlsAcceptor::from(server);
        let connector = tokio_rustls::TlsConnector::from(client);
        let name = ServerName::try_from(name.to_owned()).unwrap();
        let server_side = async move {
            let mut tls = acceptor.accept(s).await?;
            let mut buf = [0u8; 5];
            tls.read_exact(&mut buf).await?;
            assert_eq!(&buf, b"hello");
            tls.write_all(b"world").await?;
            tls.flush().await?;
            Ok::<_, io::Error>(())
        };
        let client_side = async move {
            let mut tls = connector.connect(name, c).await?;
            tls.write_all(b"hello").await?;
            tls.flush().await?;
            let mut buf = [0u8; 5];
            tls.read_exact(&mut buf).await?;
            assert_eq!(&buf, b"world");
            Ok::<_, io::Error>(tls.get_ref().1.alpn_protocol().map(<[u8]>::to_vec))
        };
        let (server_result, client_result) = tokio::join!(server_side, client_side);
        // The client's error says why (the server only sees the alert it was sent).
        let alpn = client_result?;
        server_result?;
        Ok(alpn)
    }

    #[tokio::test]
    async fn generated_certs_handshake() {
        let dir = tempfile::tempdir().unwrap();
        let certs = ensure_dev_certs(dir.path(), "localhost", &[]).unwrap();
        assert_eq!(certs.ca, dir.path().join("ca.pem"));
        assert!(dir.path().join("ca-key.pem").exists());
        // cert.pem is the leaf followed by the CA.
        let chain = load_certs(&certs.cert).unwrap();
        assert_eq!(chain.len(), 2);
        assert_eq!(chain[1], load_certs(&certs.ca).unwrap()[0]);

        let server = server_config(&certs.cert, &certs.key).unwrap();
        let client = client_config(&certs.ca).unwrap();
        // No ALPN from the client: served, nothing negotiated.
        let alpn = handshake(server.clone(), client.clone(), "localhost")
            .await
            .unwrap();
        assert_eq!(alpn, None);
        // A client offering xmpp-client gets it.
        let mut with_alpn = (*client).clone();
        with_alpn.alpn_protocols = vec![ALPN_XMPP_CLIENT.to_vec()];
        let alpn = handshake(server.clone(), Arc::new(with_alpn), "localhost")
            .await
            .unwrap();
        assert_eq!(alpn.as_deref(), Some(ALPN_XMPP_CLIENT));
        // Other names are not covered.
        let err = handshake(server, client, "example.org").await.unwrap_err();
        assert!(
            matches!(
                rustls_error(&err),
                rustls::Error::InvalidCertificate(
                    rustls::CertificateError::NotValidForNameContext { .. }
                )
            ),
            "{err}"
        );
    }

    /// `*.domain` covers node names under the domain. (Not under `localhost`: like `*.com`,
    /// a wildcard over a single label is refused by webpki and browsers.)
    #[tokio::test]
    async fn wildcard_covers_node_names() {
        let dir = tempfile::tempdir().unwrap();
        let certs = ensure_dev_certs(dir.path(), "example.net", &[]).unwrap();
        let server = server_config(&certs.cert, &certs.key).unwrap();
        let client = client_config(&certs.ca).unwrap();
        for name in ["example.net", "slave1.example.net", "127.0.0.1", "::1"] {
            handshake(server.clone(), client.clone(), name)
                .await
                .unwrap_or_else(|e| panic!("{name}: {e}"));
        }
        let err = handshake(server, client, "a.slave1.example.net")
            .await
            .unwrap_err();
        assert!(
            matches!(rustls_error(&err), rustls::Error::InvalidCertificate(_)),
            "{err}"
        );
    }

    fn rustls_error(err: &io::Error) -> &rustls::Error {
        err.get_ref()
            .and_then(|e| e.downcast_ref::<rustls::Error>())
            .unwrap_or_else(|| panic!("not a rustls error: {err:?}"))
    }

    #[tokio::test]
    async fn other_ca_is_refused() {
        let a = tempfile::tempdir().unwrap();
        let b = tempfile::tempdir().unwrap();
        let certs_a = ensure_dev_certs(a.path(), "localhost", &[]).unwrap();
        let certs_b = ensure_dev_certs(b.path(), "localhost", &[]).unwrap();
        let server = server_config(&certs_a.cert, &certs_a.key).unwrap();
        let client = client_config(&certs_b.ca).unwrap();
        // Both CAs are named "jabberfarm demo CA for localhost": the signature check fails.
        let err = handshake(server, client, "localhost").await.unwrap_err();
        assert!(
            matches!(
                rustls_error(&err),
                rustls::Error::InvalidCertificate(rustls::CertificateError::BadSignature)
            ),
            "{err}"
        );
    }

    #[test]
    fn nodes_starting_together_share_one_ca() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().to_owned();
        let handles: Vec<_> = (0..4)
            .map(|_| {
                let p = path.clone();
                std::thread::spawn(move || ensure_dev_certs(&p, "localhost", &[]).unwrap())
            })
            .collect();
        for h in handles {
            h.join().unwrap();
        }
        let certs = ensure_dev_certs(&path, "localhost", &[]).unwrap();
        // Whatever each thread did, the files on disk form one working chain.
        server_config(&certs.cert, &certs.key).unwrap();
        client_config(&certs.ca).unwrap();
        assert!(
            verify_chain(
                &certs.ca,
                &load_certs(&certs.cert).unwrap()[0],
                &[],
                &[server_name("localhost").unwrap()]
            )
            .is_ok()
        );
    }

    #[test]
    fn second_call_keeps_files() {
        let dir = tempfile::tempdir().unwrap();
        let extra: IpAddr = "10.0.0.12".parse().unwrap();
        let names = ["ca.pem", "ca-key.pem", "cert.pem", "key.pem"];
        let snapshot = || {
            names.map(|n| {
                let path = dir.path().join(n);
                (
                    fs::read(&path).unwrap(),
                    fs::metadata(&path).unwrap().modified().unwrap(),
                )
            })
        };
        let first = ensure_dev_certs(dir.path(), "example.net", &[extra]).unwrap();
        let before = snapshot();
        let second = ensure_dev_certs(dir.path(), "example.net", &[extra]).unwrap();
        assert_eq!(first, second);
        assert!(before == snapshot(), "files were rewritten");
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            for (name, mode) in [
                ("ca-key.pem", 0o600),
                ("key.pem", 0o600),
                ("cert.pem", 0o644),
            ] {
                let meta = fs::metadata(dir.path().join(name)).unwrap();
                assert_eq!(meta.permissions().mode() & 0o777, mode, "{name}");
            }
        }
    }

    #[test]
    fn regenerates_what_no_longer_fits() {
        let dir = tempfile::tempdir().unwrap();
        ensure_dev_certs(dir.path(), "example.net", &[]).unwrap();
        let ca = fs::read(dir.path().join("ca.pem")).unwrap();
        let leaf = fs::read(dir.path().join("cert.pem")).unwrap();

        // A new address: new leaf from the same CA.
        let ip: IpAddr = "2001:db8::7".parse().unwrap();
        let certs = ensure_dev_certs(dir.path(), "example.net", &[ip]).unwrap();
        assert_eq!(fs::read(&certs.ca).unwrap(), ca);
        assert_ne!(fs::read(&certs.cert).unwrap(), leaf);
        let chain = load_certs(&certs.cert).unwrap();
        let name = ServerName::IpAddress(ip.into());
        verify_chain(&certs.ca, &chain[0], &[], &[name]).unwrap();

        // A lost key.pem: new leaf, same CA.
        fs::remove_file(&certs.key).unwrap();
        let certs = ensure_dev_certs(dir.path(), "example.net", &[ip]).unwrap();
        assert_eq!(fs::read(&certs.ca).unwrap(), ca);
        server_config(&certs.cert, &certs.key).unwrap();

        // Another domain: the CA is "for example.net", so a new CA.
        let certs = ensure_dev_certs(dir.path(), "example.org", &[]).unwrap();
        assert_ne!(fs::read(&certs.ca).unwrap(), ca);
        let chain = load_certs(&certs.cert).unwrap();
        let name = ServerName::try_from("example.org").unwrap();
        verify_chain(&certs.ca, &chain[0], &chain[1..], &[name]).unwrap();
    }

    #[test]
    fn bad_files_are_named() {
        let dir = tempfile::tempdir().unwrap();
        let certs = ensure_dev_certs(dir.path(), "localhost", &[]).unwrap();

        let garbage = dir.path().join("garbage-key.pem");
        fs::write(&garbage, b"this is not a key\n").unwrap();
        let err = server_config(&certs.cert, &garbage).unwrap_err();
        assert!(
            matches!(err, TlsError::NoKey { ref path } if *path == garbage),
            "{err:?}"
        );
        assert!(
            err.to_string().contains(&garbage.display().to_string()),
            "{err}"
        );

        let broken = dir.path().join("broken-key.pem");
        fs::write(
            &broken,
            b"-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n",
        )
        .unwrap();
        let err = server_config(&certs.cert, &broken).unwrap_err();
        assert!(
            matches!(err, TlsError::BadKey { ref path, .. } if *path == broken),
            "{err:?}"
        );

        let err = server_config(&certs.cert, &dir.path().join("ca-key.pem")).unwrap_err();
        assert!(matches!(err, TlsError::KeyMismatch { .. }), "{err:?}");
        assert!(err.to_string().contains("ca-key.pem"), "{err}");

        let err = server_config(&garbage, &certs.key).unwrap_err();
        assert!(
            matches!(err, TlsError::NoCertificate { ref path } if *path == garbage),
            "{err:?}"
        );

        let missing = dir.path().join("missing.pem");
        let err = server_config(&missing, &certs.key).unwrap_err();
        assert_eq!(
            err.to_string(),
            format!("{}: file does not exist", missing.display())
        );
        assert!(matches!(
            client_config(&missing),
            Err(TlsError::Missing { .. })
        ));

        let err = ensure_dev_certs(dir.path(), "not a domain", &[]).unwrap_err();
        assert!(matches!(err, TlsError::InvalidDomain { .. }), "{err:?}");
    }

    #[test]
    fn garbage_key_file_is_replaced_by_ensure() {
        let dir = tempfile::tempdir().unwrap();
        let certs = ensure_dev_certs(dir.path(), "localhost", &[]).unwrap();
        fs::write(&certs.key, b"garbage").unwrap();
        let certs = ensure_dev_certs(dir.path(), "localhost", &[]).unwrap();
        server_config(&certs.cert, &certs.key).unwrap();
    }
}
