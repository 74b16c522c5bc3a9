//! Throwaway certificates for TLS tests, made with rcgen: a CA and a server certificate it
//! signed for `localhost` and `127.0.0.1`, written as PEM files into a temp dir.

use std::fs;
use std::path::PathBuf;

use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair};

pub struct Certs {
    /// Holds the files; removed when dropped.
    _dir: tempfile::TempDir,
    /// The CA certificate, for `sslrootcert` and `tls_ca_file`.
    pub ca: PathBuf,
    /// The server certificate and its key.
    pub cert: PathBuf,
    pub key: PathBuf,
    pub cert_pem: String,
    pub key_pem: String,
}

/// A new CA named `ca_name` and a server certificate it signed.
pub fn generate(ca_name: &str) -> Certs {
    let ca_key = KeyPair::generate().expect("CA key");
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(DnType::CommonName, ca_name);
    let ca_cert = ca_params.self_signed(&ca_key).expect("self-signed CA");
    let issuer = Issuer::new(ca_params, ca_key);

    let key = KeyPair::generate().expect("server key");
    let mut params = CertificateParams::new(vec!["localhost".to_owned(), "127.0.0.1".to_owned()])
        .expect("server params");
    params
        .distinguished_name
        .push(DnType::CommonName, "localhost");
    let cert = params.signed_by(&key, &issuer).expect("server certificate");

    let dir = tempfile::Builder::new()
        .prefix("pgrelay-certs.")
        .tempdir()
        .expect("certs temp dir");
    let write = |name: &str, pem: &str| {
        let path = dir.path().join(name);
        fs::write(&path, pem).expect("write PEM");
        path
    };
    let cert_pem = cert.pem();
    let key_pem = key.serialize_pem();
    Certs {
        ca: write("ca.pem", &ca_cert.pem()),
        cert: write("server.pem", &cert_pem),
        key: write("server.key", &key_pem),
        cert_pem,
        key_pem,
        _dir: dir,
    }
}
