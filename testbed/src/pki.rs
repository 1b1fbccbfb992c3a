//! The keys and certificates of one control plane, generated per run so no
//! secret is committed and no two runs trust each other.

use std::fs;
use std::path::{Path, PathBuf};

use anyhow::Context as _;
use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair, KeyUsagePurpose};

/// Files written by [`generate`], all inside the control plane's directory.
#[derive(Debug)]
pub(crate) struct Pki {
    /// CA that signed the serving certificate; clients trust only this.
    pub ca_cert: PathBuf,
    pub serving_cert: PathBuf,
    pub serving_key: PathBuf,
    /// Private key kube-apiserver signs service-account tokens with.
    pub sa_signing_key: PathBuf,
    /// Its public half, which kube-apiserver verifies tokens with.
    pub sa_public_key: PathBuf,
}

pub(crate) fn generate(dir: &Path) -> anyhow::Result<Pki> {
    fs::create_dir_all(dir)?;
    let pki = Pki {
        ca_cert: dir.join("ca.crt"),
        serving_cert: dir.join("apiserver.crt"),
        serving_key: dir.join("apiserver.key"),
        sa_signing_key: dir.join("sa.key"),
        sa_public_key: dir.join("sa.pub"),
    };

    let mut ca_params = CertificateParams::default();
    ca_params.distinguished_name.push(DnType::CommonName, "chatworkspace testbed CA");
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let ca = CertifiedIssuer::self_signed(ca_params, KeyPair::generate()?).context("generating the CA")?;

    // Clients connect to 127.0.0.1; "localhost" is there for people who type
    // it. A node's components reach the apiserver at the node's address, and
    // its pods at the `kubernetes` Service (crate::node).
    let mut serving = CertificateParams::new(vec![
        "127.0.0.1".to_owned(),
        "localhost".to_owned(),
        crate::node::NODE_IP.to_owned(),
        crate::node::KUBERNETES_SERVICE_IP.to_owned(),
        "kubernetes.default.svc".to_owned(),
        "kubernetes.default.svc.cluster.local".to_owned(),
    ])?;
    serving.distinguished_name.push(DnType::CommonName, "kube-apiserver");
    let serving_key = KeyPair::generate()?;
    let serving_cert = serving.signed_by(&serving_key, &ca).context("signing the serving certificate")?;

    // ECDSA P-256 (rcgen's default) is accepted by kube-apiserver for
    // service-account tokens (ES256). The verification key is written as a
    // PKIX public key, a form its key-file parser always reads.
    let sa_key = KeyPair::generate()?;

    write(&pki.ca_cert, &ca.pem())?;
    write(&pki.serving_cert, &serving_cert.pem())?;
    write(&pki.serving_key, &serving_key.serialize_pem())?;
    write(&pki.sa_signing_key, &sa_key.serialize_pem())?;
    write(&pki.sa_public_key, &sa_key.public_key_pem())?;
    Ok(pki)
}

fn write(path: &Path, contents: &str) -> anyhow::Result<()> {
    fs::write(path, contents).with_context(|| format!("writing {}", path.display()))
}
