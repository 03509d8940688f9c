//! Certificates for a cluster (`shoal cert …`, rcgen): a cluster CA, node certificates
//! (one per node, serving both inter-node mutual TLS and client TLS, so it carries the
//! serverAuth and clientAuth purposes), and client certificates (the user name as common
//! name). Keys are ECDSA P-256.
//!
//! Files, in one certificates directory (CockroachDB's layout, so operators who know it
//! find their way):
//!
//! | file | what |
//! |---|---|
//! | `ca.crt` / `ca.key` | the cluster CA (the key signs; keep it off the nodes if you can) |
//! | `node.crt` / `node.key` | this node's certificate and key |
//! | `client.<user>.crt` / `client.<user>.key` | a client's |
//!
//! Keys are written with mode 0600, certificates 0644; an existing key is never
//! overwritten (the command fails and says which file), since replacing a CA key by
//! mistake orphans every certificate it signed.

use std::io::Write;
use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, SanType,
};
use time::{Duration, OffsetDateTime};

/// A new CA's lifetime, days.
pub const CA_LIFETIME_DAYS: i64 = 3_650;
/// A new node or client certificate's lifetime, days (shorter than the CA's, so rotation is
/// practised before the CA needs it).
pub const CERT_LIFETIME_DAYS: i64 = 365;
/// A certificate expiring sooner than this is warned about (days).
pub const EXPIRY_WARNING_DAYS: i64 = 30;

pub const CA_CERT: &str = "ca.crt";
pub const CA_KEY: &str = "ca.key";
pub const NODE_CERT: &str = "node.crt";
pub const NODE_KEY: &str = "node.key";

fn err(what: impl std::fmt::Display) -> String {
    what.to_string()
}

/// Writes `contents` to `path` with `mode`, refusing to replace an existing file.
fn write_new(path: &Path, contents: &str, mode: u32) -> Result<(), String> {
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(path)
        .map_err(|e| {
            if e.kind() == std::io::ErrorKind::AlreadyExists {
                format!(
                    "{} exists; not overwriting it (move it away first to make a new one)",
                    path.display()
                )
            } else {
                format!("{}: {e}", path.display())
            }
        })?;
    f.write_all(contents.as_bytes())
        .and_then(|()| f.sync_all())
        .map_err(|e| format!("{}: {e}", path.display()))
}

fn validity(params: &mut CertificateParams, days: i64) {
    let now = OffsetDateTime::now_utc();
    // A minute back, for peers whose clocks run slightly behind.
    params.not_before = now - Duration::minutes(1);
    params.not_after = now + Duration::days(days);
}

fn name(common: &str) -> DistinguishedName {
    let mut dn = DistinguishedName::new();
    dn.push(DnType::OrganizationName, "Shoal");
    dn.push(DnType::CommonName, common);
    dn
}

/// Creates `ca.crt` and `ca.key` in `dir`.
pub fn create_ca(dir: &Path, days: i64) -> Result<Vec<PathBuf>, String> {
    std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let key = KeyPair::generate().map_err(err)?;
    let mut params = CertificateParams::new(Vec::<String>::new()).map_err(err)?;
    params.distinguished_name = name("Shoal CA");
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    validity(&mut params, days);
    let cert = params.self_signed(&key).map_err(err)?;
    let (crt, k) = (dir.join(CA_CERT), dir.join(CA_KEY));
    write_new(&k, &key.serialize_pem(), 0o600)?;
    write_new(&crt, &cert.pem(), 0o644)?;
    Ok(vec![crt, k])
}

/// The CA in `dir` (certificate and key), as an issuer.
fn load_ca(dir: &Path) -> Result<Issuer<'static, KeyPair>, String> {
    let read = |f: &str| {
        let p = dir.join(f);
        std::fs::read_to_string(&p).map_err(|e| {
            format!(
                "{}: {e} (create the CA first: shoal cert create-ca --certs-dir {})",
                p.display(),
                dir.display()
            )
        })
    };
    let key = KeyPair::from_pem(&read(CA_KEY)?).map_err(|e| format!("{CA_KEY}: {e}"))?;
    Issuer::from_ca_cert_pem(&read(CA_CERT)?, key).map_err(|e| format!("{CA_CERT}: {e}"))
}

/// Creates `node.crt`/`node.key` for `hosts` (DNS names or IP addresses, each a subject
/// alternative name; the first is the common name), signed by the CA in `dir`.
pub fn create_node(dir: &Path, hosts: &[String], days: i64) -> Result<Vec<PathBuf>, String> {
    let first = hosts
        .first()
        .ok_or("name at least one host name or address the node is reached at")?;
    let issuer = load_ca(dir)?;
    let key = KeyPair::generate().map_err(err)?;
    let mut params = CertificateParams::new(Vec::<String>::new()).map_err(err)?;
    params.distinguished_name = name(first);
    for h in hosts {
        params
            .subject_alt_names
            .push(match h.parse::<std::net::IpAddr>() {
                Ok(ip) => SanType::IpAddress(ip),
                Err(_) => SanType::DnsName(
                    h.as_str()
                        .try_into()
                        .map_err(|e| format!("host name {h:?}: {e}"))?,
                ),
            });
    }
    params.key_usages = vec![
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::KeyEncipherment,
    ];
    params.extended_key_usages = vec![
        ExtendedKeyUsagePurpose::ServerAuth,
        ExtendedKeyUsagePurpose::ClientAuth,
    ];
    params.use_authority_key_identifier_extension = true;
    validity(&mut params, days);
    let cert = params.signed_by(&key, &issuer).map_err(err)?;
    let (crt, k) = (dir.join(NODE_CERT), dir.join(NODE_KEY));
    write_new(&k, &key.serialize_pem(), 0o600)?;
    write_new(&crt, &cert.pem(), 0o644)?;
    Ok(vec![crt, k])
}

/// Creates `client.<user>.crt`/`.key`, signed by the CA in `dir`.
pub fn create_client(dir: &Path, user: &str, days: i64) -> Result<Vec<PathBuf>, String> {
    shoal_consensus::users::check_name(user)?;
    let issuer = load_ca(dir)?;
    let key = KeyPair::generate().map_err(err)?;
    let mut params = CertificateParams::new(Vec::<String>::new()).map_err(err)?;
    params.distinguished_name = name(user);
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    params.use_authority_key_identifier_extension = true;
    validity(&mut params, days);
    let cert = params.signed_by(&key, &issuer).map_err(err)?;
    let crt = dir.join(format!("client.{user}.crt"));
    let k = dir.join(format!("client.{user}.key"));
    write_new(&k, &key.serialize_pem(), 0o600)?;
    write_new(&crt, &cert.pem(), 0o644)?;
    Ok(vec![crt, k])
}

/// One certificate file as `shoal cert ls` shows it.
#[derive(Debug)]
pub struct CertInfo {
    pub file: PathBuf,
    pub subject: String,
    pub not_after: OffsetDateTime,
}

impl CertInfo {
    /// Whole days until it expires (negative: expired).
    pub fn days_left(&self, now: OffsetDateTime) -> i64 {
        (self.not_after - now).whole_days()
    }
}

/// Reads the first certificate of a PEM file.
pub fn inspect(path: &Path) -> Result<CertInfo, String> {
    let bad = |e: &dyn std::fmt::Display| format!("{}: {e}", path.display());
    let text = std::fs::read(path).map_err(|e| bad(&e))?;
    let (_, pem) = x509_parser::pem::parse_x509_pem(&text).map_err(|e| bad(&e))?;
    let cert = pem.parse_x509().map_err(|e| bad(&e))?;
    let subject = cert
        .subject()
        .iter_common_name()
        .next()
        .and_then(|cn| cn.as_str().ok())
        .unwrap_or_default()
        .to_string();
    let not_after = OffsetDateTime::from_unix_timestamp(cert.validity().not_after.timestamp())
        .map_err(|e| bad(&e))?;
    Ok(CertInfo {
        file: path.to_path_buf(),
        subject,
        not_after,
    })
}

/// Every `*.crt` in `dir`, soonest expiry first.
pub fn list(dir: &Path) -> Result<Vec<CertInfo>, String> {
    let mut out = vec![];
    for e in std::fs::read_dir(dir).map_err(|e| format!("{}: {e}", dir.display()))? {
        let p = e.map_err(err)?.path();
        if p.extension().is_some_and(|x| x == "crt") {
            out.push(inspect(&p)?);
        }
    }
    out.sort_by_key(|c| c.not_after);
    Ok(out)
}

/// How often a node re-checks its certificates' expiry.
pub const EXPIRY_CHECK_EVERY: std::time::Duration = std::time::Duration::from_secs(24 * 3600);

/// A node's TLS material and when it expires: loaded at start, reloaded on SIGHUP
/// ([`CertWatch::reload`]), checked daily; a certificate (node or CA) expiring within
/// [`EXPIRY_WARNING_DAYS`] is a WARN each time. The soonest expiry is reported to the
/// cluster (`system.nodes.cert_expires_at`).
pub struct CertWatch {
    pub tls: std::sync::Arc<shoal_transport::tls::Tls>,
    /// Unix ms of the soonest expiry of `node.crt` and `ca.crt`.
    pub expires_ms: std::sync::Arc<std::sync::atomic::AtomicU64>,
}

impl CertWatch {
    /// Loads the material in `dir`; the node certificate must name each of `names`.
    pub fn load(dir: &Path, names: &[&str]) -> Result<std::sync::Arc<CertWatch>, String> {
        let tls = shoal_transport::tls::Tls::load(dir, names)?;
        let w = std::sync::Arc::new(CertWatch {
            tls,
            expires_ms: Default::default(),
        });
        w.check();
        Ok(w)
    }

    /// Reads the files again (see `Tls::reload`); the old material stays on any error.
    pub fn reload(&self) -> Result<(), String> {
        self.tls.reload()?;
        self.check();
        Ok(())
    }

    /// Notes when the certificates in use (not the files, which a failed reload may have
    /// left different) expire, and warns when that is near. Returns the days left.
    pub fn check(&self) -> Option<i64> {
        let unix = self.tls.expires_unix();
        if unix <= 0 {
            return None;
        }
        self.expires_ms
            .store((unix * 1000) as u64, std::sync::atomic::Ordering::Relaxed);
        let at = OffsetDateTime::from_unix_timestamp(unix).ok()?;
        let left = (at - OffsetDateTime::now_utc()).whole_days();
        if left < EXPIRY_WARNING_DAYS {
            tracing::warn!(
                dir = %self.tls.dir().display(),
                days_left = left,
                expires = %at,
                "a TLS certificate in use (the node's or its CA) expires soon: make a new \
                 one (`shoal cert create-node`, or `create-ca` and then every node's) and \
                 send SIGHUP to load it"
            );
        }
        Some(left)
    }

    /// Checks the expiry every [`EXPIRY_CHECK_EVERY`] until the node stops.
    pub fn spawn_daily(self: &std::sync::Arc<Self>) -> tokio::task::JoinHandle<()> {
        let w = std::sync::Arc::downgrade(self);
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(EXPIRY_CHECK_EVERY).await;
                let Some(w) = w.upgrade() else { return };
                w.check();
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_ca_signs_node_and_client_certificates_with_private_keys() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        create_ca(d, CA_LIFETIME_DAYS).unwrap();
        create_node(d, &["n1.example".into(), "127.0.0.1".into()], 30).unwrap();
        create_client(d, "ada", CERT_LIFETIME_DAYS).unwrap();
        for key in [CA_KEY, NODE_KEY, "client.ada.key"] {
            let mode = std::fs::metadata(d.join(key)).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600, "{key}");
        }
        let again = create_ca(d, 10).unwrap_err();
        assert!(again.contains("not overwriting"), "{again}");
        let certs = list(d).unwrap();
        assert_eq!(certs.len(), 3);
        let now = OffsetDateTime::now_utc();
        assert_eq!(certs[0].file, d.join(NODE_CERT), "soonest expiry first");
        assert!((29..=30).contains(&certs[0].days_left(now)));
        assert!(certs[2].days_left(now) > 3_000);
        assert!(
            certs[0].subject.contains("n1.example"),
            "{:?}",
            certs[0].subject
        );
        let empty = tempfile::tempdir().unwrap();
        let e = create_node(empty.path(), &["x".into()], 1).unwrap_err();
        assert!(e.contains("create-ca"), "{e}");
        assert!(create_client(d, "bad name", 1).is_err());
    }
}
