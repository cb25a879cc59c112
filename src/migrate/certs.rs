//! `migrate-certs`: a migration CA and one certificate per host, for the
//! mutual TLS of the control channel (rustls) and of CRIU's page server
//! (GnuTLS). Every node certificate is valid for both client and server
//! use and carries the name `cntrlive-migration` besides its host name.

use std::path::Path;

use anyhow::{bail, Context as _, Result};
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair,
    KeyUsagePurpose,
};

use crate::checkpoint::options::Tls;
use crate::cli::MigrateCertsArgs;

fn write(path: &Path, text: &str, mode: u32) -> Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(path)
        .with_context(|| format!("cannot create {}", path.display()))?;
    f.write_all(text.as_bytes())?;
    Ok(())
}

pub fn migrate_certs(args: MigrateCertsArgs) -> Result<()> {
    if args.host.is_empty() {
        bail!("name at least one host: --host NAME (one directory of certificates each)");
    }
    let out = &args.dir;
    if out.join(Tls::CA).exists() {
        bail!(
            "{} already holds a CA: choose another directory (a new CA is not trusted by hosts holding the old one)",
            out.display()
        );
    }
    crate::commands::checkpoint::make_dir(out, "certificate directory")?;
    let mut ca = CertificateParams::new(Vec::<String>::new())?;
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.distinguished_name
        .push(DnType::CommonName, "cntrlive-runtime migration CA");
    ca.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let ca_key = KeyPair::generate()?;
    let ca_cert = ca.self_signed(&ca_key)?;
    write(&out.join(Tls::CA), &ca_cert.pem(), 0o644)?;
    write(&out.join("ca-key.pem"), &ca_key.serialize_pem(), 0o600)?;
    for host in &args.host {
        crate::store::validate_id(host).with_context(|| format!("bad host name {host:?}"))?;
        let dir = out.join(host);
        crate::commands::checkpoint::make_dir(&dir, "host certificate directory")?;
        let mut p = CertificateParams::new(vec![
            crate::migrate::wire::PEER_NAME.to_string(),
            host.clone(),
        ])?;
        p.distinguished_name.push(DnType::CommonName, host.as_str());
        p.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ];
        p.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        let key = KeyPair::generate()?;
        let cert = p.signed_by(&key, &ca_cert, &ca_key)?;
        write(&dir.join(Tls::CA), &ca_cert.pem(), 0o644)?;
        write(&dir.join(Tls::CERT), &cert.pem(), 0o644)?;
        write(&dir.join(Tls::KEY), &key.serialize_pem(), 0o600)?;
        println!("{}", dir.display());
    }
    Ok(())
}
