//! `tls_server_config`: versions, cipher suites, curves, the server certificate
//! and the checks on client certificates (who issued them, which names they carry).
//!
//! Go's `crypto/tls` decides several things differently from rustls' defaults,
//! and exporter-toolkit's behaviour is Go's, so this module bends rustls to it:
//! `cipher_suites` governs TLS 1.2 only (Go has no setting for TLS 1.3 suites);
//! a client certificate is verified against the system's CAs when no
//! `client_ca_file` is given; a self-signed certificate that is itself one of the
//! configured CAs is accepted as a client's; `min_version` above `max_version`
//! is a file that loads but whose every handshake fails. What rustls cannot do
//! at all (TLS 1.0 and 1.1, CBC and static-RSA suites, P-521) is refused with an
//! error naming the setting.

use std::sync::{Arc, OnceLock};

use rustls::crypto::{ring as ring_provider, CryptoProvider, WebPkiSupportedAlgorithms};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::server::WebPkiClientVerifier;
use rustls::{
    CertificateError, DigitallySignedStruct, DistinguishedName, RootCertStore, ServerConfig,
    SignatureScheme, SupportedCipherSuite, SupportedProtocolVersion,
};

use super::schema::{non_empty, RawTls};
use super::{invalid, WebConfigError};

/// How TLS connections are served.
pub(super) enum TlsServing {
    /// Handshakes use this configuration.
    Ready(Arc<ServerConfig>),
    /// `min_version` is above `max_version`: the file is valid, as in
    /// exporter-toolkit, but no handshake can succeed.
    NoCommonVersion,
}

/// Builds the TLS configuration. `http2` is `http_server_config.http2`;
/// `warnings` collects what loads but deserves a line in the log.
pub(super) fn build_tls(
    raw: &RawTls,
    http2: Option<bool>,
    cert: Option<Vec<u8>>,
    key: Option<Vec<u8>>,
    client_ca: Option<Vec<u8>>,
    warnings: &mut Vec<String>,
) -> Result<TlsServing, WebConfigError> {
    let cert =
        cert.ok_or_else(|| invalid("tls_server_config", "missing one of cert or cert_file"))?;
    let key = key.ok_or_else(|| invalid("tls_server_config", "missing one of key or key_file"))?;
    let chain = CertificateDer::pem_slice_iter(&cert)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| invalid("tls_server_config.cert_file", format!("not PEM: {e}")))?;
    if chain.is_empty() {
        return Err(invalid(
            "tls_server_config.cert_file",
            "no CERTIFICATE block found",
        ));
    }
    let key = PrivateKeyDer::from_pem_slice(&key).map_err(|e| {
        invalid(
            "tls_server_config.key_file",
            format!("no usable private key: {e}"),
        )
    })?;

    let min = tls_version(
        "tls_server_config.min_version",
        raw.min_version.as_ref(),
        &rustls::version::TLS12,
    )?;
    let max = tls_version(
        "tls_server_config.max_version",
        raw.max_version.as_ref(),
        &rustls::version::TLS13,
    )?;
    let provider = Arc::new(provider(raw)?);
    check_http2(raw, http2, min)?;
    let verifier = client_verifier(raw, client_ca, &provider, warnings)?;

    let rank = |v: &SupportedProtocolVersion| u16::from(v.version);
    let versions: Vec<&'static SupportedProtocolVersion> =
        [&rustls::version::TLS12, &rustls::version::TLS13]
            .into_iter()
            .filter(|v| rank(v) >= rank(min) && rank(v) <= rank(max))
            .collect();
    // With no common version the configuration is still built, so that the
    // certificate and key are checked.
    let build_with: &[&'static SupportedProtocolVersion] = if versions.is_empty() {
        &[&rustls::version::TLS13]
    } else {
        &versions
    };
    let mut config = ServerConfig::builder_with_provider(Arc::clone(&provider))
        .with_protocol_versions(build_with)?
        .with_client_cert_verifier(verifier)
        .with_single_cert(chain, key)?;
    if versions.is_empty() {
        warnings.push(
            "tls_server_config: min_version is above max_version, so every TLS handshake fails"
                .into(),
        );
        return Ok(TlsServing::NoCommonVersion);
    }
    config.ignore_client_order = raw.prefer_server_cipher_suites.unwrap_or(true);
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(TlsServing::Ready(Arc::new(config)))
}

fn tls_version(
    field: &str,
    value: Option<&String>,
    default: &'static SupportedProtocolVersion,
) -> Result<&'static SupportedProtocolVersion, WebConfigError> {
    match value.map(String::as_str) {
        None | Some("") => Ok(default),
        Some("TLS12") => Ok(&rustls::version::TLS12),
        Some("TLS13") => Ok(&rustls::version::TLS13),
        Some(v @ ("TLS10" | "TLS11")) => Err(invalid(
            field,
            format!("{v} is not supported: rustls speaks only TLS12 and TLS13, older versions are insecure"),
        )),
        Some(v) => Err(invalid(
            field,
            format!("unknown TLS version '{v}'; use TLS12 or TLS13"),
        )),
    }
}

/// TLS 1.2 cipher suites by their Go names (as exporter-toolkit spells them).
fn tls12_suite(name: &str) -> Option<SupportedCipherSuite> {
    use ring_provider::cipher_suite as cs;
    Some(match name {
        "TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256" => cs::TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256,
        "TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384" => cs::TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384,
        "TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256"
        | "TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305" => {
            cs::TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256
        }
        "TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256" => cs::TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256,
        "TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384" => cs::TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384,
        "TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256" | "TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305" => {
            cs::TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256
        }
        _ => return None,
    })
}

/// The TLS 1.3 suites Go names; they are always on, as in Go.
const TLS13_SUITES: &[&str] = &[
    "TLS_AES_128_GCM_SHA256",
    "TLS_AES_256_GCM_SHA384",
    "TLS_CHACHA20_POLY1305_SHA256",
];

/// Suites Go knows and rustls does not implement: CBC, RC4, 3DES, static RSA.
fn is_legacy_suite(name: &str) -> bool {
    name.starts_with("TLS_")
        && (name.contains("_CBC_")
            || name.contains("_RC4_")
            || name.contains("3DES")
            || name.starts_with("TLS_RSA_WITH_"))
}

const SUPPORTED_SUITES: &str = "TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256, \
    TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384, TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256, \
    TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256, TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384, \
    TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256";

/// The provider: ring, narrowed to the configured TLS 1.2 suites and curves.
///
/// As in Go, `cipher_suites` governs TLS 1.2 only: the TLS 1.3 suites stay all
/// enabled, and TLS 1.3 names in the list are accepted and change nothing.
fn provider(raw: &RawTls) -> Result<CryptoProvider, WebConfigError> {
    const FIELD: &str = "tls_server_config.cipher_suites";
    let mut provider = ring_provider::default_provider();
    if let Some(names) = raw.cipher_suites.as_ref().filter(|n| !n.is_empty()) {
        let mut suites: Vec<SupportedCipherSuite> = provider
            .cipher_suites
            .iter()
            .copied()
            .filter(|s| matches!(s, SupportedCipherSuite::Tls13(_)))
            .collect();
        for name in names {
            if TLS13_SUITES.contains(&name.as_str()) {
                continue;
            }
            let suite = tls12_suite(name).ok_or_else(|| {
                if is_legacy_suite(name) {
                    invalid(FIELD, format!(
                        "'{name}' is not offered by rustls (no CBC, RC4, 3DES or static-RSA suites); supported for TLS 1.2: {SUPPORTED_SUITES}"
                    ))
                } else {
                    invalid(FIELD, format!("unknown cipher '{name}'; supported for TLS 1.2: {SUPPORTED_SUITES}"))
                }
            })?;
            if !suites.contains(&suite) {
                suites.push(suite);
            }
        }
        provider.cipher_suites = suites;
    }
    if let Some(names) = raw.curve_preferences.as_ref().filter(|n| !n.is_empty()) {
        use ring_provider::kx_group;
        const FIELD: &str = "tls_server_config.curve_preferences";
        let mut groups = Vec::with_capacity(names.len());
        for name in names {
            groups.push(match name.as_str() {
                "X25519" => kx_group::X25519,
                "CurveP256" => kx_group::SECP256R1,
                "CurveP384" => kx_group::SECP384R1,
                "CurveP521" => {
                    return Err(invalid(
                        FIELD,
                        "CurveP521 is not offered by rustls; use X25519, CurveP256 or CurveP384",
                    ))
                }
                other => {
                    return Err(invalid(
                        FIELD,
                        format!("unknown curve '{other}'; use X25519, CurveP256 or CurveP384"),
                    ))
                }
            });
        }
        provider.kx_groups = groups;
    }
    Ok(provider)
}

/// HTTP/2 is not served here; what exporter-toolkit would do with it still
/// decides whether the file is valid, so that a file means the same everywhere.
fn check_http2(
    raw: &RawTls,
    http2: Option<bool>,
    min: &SupportedProtocolVersion,
) -> Result<(), WebConfigError> {
    match http2 {
        Some(false) => Ok(()),
        Some(true) => Err(invalid(
            "http_server_config.http2",
            "HTTP/2 is not served (HTTP/1.1 only); remove the setting or set it to false",
        )),
        None => {
            // Go's HTTP/2 server (on by default in exporter-toolkit) refuses to
            // start when TLS 1.2 is allowed and the suites lack the one HTTP/2
            // requires; the same file is refused here.
            let Some(names) = raw.cipher_suites.as_ref().filter(|n| !n.is_empty()) else {
                return Ok(());
            };
            let required = [
                "TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256",
                "TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256",
            ];
            if min.version == rustls::ProtocolVersion::TLSv1_3
                || names.iter().any(|n| required.contains(&n.as_str()))
            {
                return Ok(());
            }
            Err(invalid(
                "tls_server_config.cipher_suites",
                "lacks TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256 or TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256, \
                 which HTTP/2 requires: exporter-toolkit refuses this file unless http_server_config.http2 is false",
            ))
        }
    }
}

/// Reads a PEM bundle of CA certificates.
fn parse_cas(pem: &[u8]) -> Result<Vec<CertificateDer<'static>>, WebConfigError> {
    const FIELD: &str = "tls_server_config.client_ca_file";
    let cas = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| invalid(FIELD, format!("not PEM: {e}")))?;
    if cas.is_empty() {
        return Err(invalid(FIELD, "no CERTIFICATE block found"));
    }
    Ok(cas)
}

/// The CAs of the system (what Go's `x509.SystemCertPool` reads): where an
/// organisation installs the CA that issues its client certificates. Read once
/// per process, as Go reads them, so that a reload does not read the whole
/// system store again.
fn system_roots(warnings: &mut Vec<String>) -> Arc<RootCertStore> {
    static SYSTEM: OnceLock<Arc<RootCertStore>> = OnceLock::new();
    let roots = SYSTEM.get_or_init(|| {
        let mut roots = RootCertStore::empty();
        roots.add_parsable_certificates(rustls_native_certs::load_native_certs().certs);
        Arc::new(roots)
    });
    if roots.is_empty() {
        warnings.push(
            "tls_server_config: no client_ca_file and no system CA certificates found, so every client certificate is refused".into(),
        );
    }
    Arc::clone(roots)
}

fn client_verifier(
    raw: &RawTls,
    client_ca: Option<Vec<u8>>,
    provider: &Arc<CryptoProvider>,
    warnings: &mut Vec<String>,
) -> Result<Arc<dyn ClientCertVerifier>, WebConfigError> {
    const FIELD: &str = "tls_server_config.client_auth_type";
    let kind = non_empty(&raw.client_auth_type).map_or("NoClientCert", String::as_str);
    let (verify, mandatory) = match kind {
        "NoClientCert" => {
            if client_ca.is_some() {
                return Err(invalid(
                    FIELD,
                    "client CAs are configured without a client auth policy: NoClientCert never asks for a certificate; set RequireAndVerifyClientCert",
                ));
            }
            if raw.client_allowed_sans.is_some() {
                warnings.push("tls_server_config.client_allowed_sans: has no effect with NoClientCert, which asks for no certificate".into());
            }
            return Ok(WebPkiClientVerifier::no_client_auth());
        }
        "RequestClientCert" => (false, false),
        "RequireAnyClientCert" | "RequireClientCert" => (false, true),
        "VerifyClientCertIfGiven" => (true, false),
        "RequireAndVerifyClientCert" => (true, true),
        other => {
            return Err(invalid(
                FIELD,
                format!("invalid ClientAuth '{other}'; use NoClientCert, RequestClientCert, RequireAnyClientCert, VerifyClientCertIfGiven or RequireAndVerifyClientCert"),
            ))
        }
    };
    let mut anchors = Vec::new();
    let mut hints = Vec::new();
    let mut webpki = None;
    if verify {
        let roots = match client_ca {
            Some(pem) => {
                anchors = parse_cas(&pem)?;
                let mut roots = RootCertStore::empty();
                for ca in &anchors {
                    roots.add(ca.clone()).map_err(|e| {
                        invalid(
                            "tls_server_config.client_ca_file",
                            format!("unusable CA certificate: {e}"),
                        )
                    })?;
                }
                Arc::new(roots)
            }
            None => system_roots(warnings),
        };
        if !roots.is_empty() {
            let verifier = WebPkiClientVerifier::builder_with_provider(roots, Arc::clone(provider))
                .build()
                .map_err(|e| invalid(FIELD, format!("cannot build the verifier: {e}")))?;
            // Like Go, name the configured CAs to the client, not the system's.
            if !anchors.is_empty() {
                hints = verifier.root_hint_subjects().to_vec();
            }
            webpki = Some(verifier);
        }
    }
    let allowed_sans = raw.client_allowed_sans.clone();
    Ok(Arc::new(ClientCerts {
        verify: verify.then_some(Verify { webpki, anchors }),
        // Allowed names can only be checked on a certificate: with a list, a
        // connection without one is refused (exporter-toolkit drops it too).
        mandatory: mandatory || allowed_sans.is_some(),
        allowed_sans,
        algorithms: provider.signature_verification_algorithms,
        hints,
    }))
}

/// How a client certificate is checked, when it is.
///
/// Holds the policy of `client_auth_type` (whether a certificate is required,
/// whether it must chain to a CA) and `client_allowed_sans`. The handshake
/// signature is always verified, so a client does hold its certificate's key.
#[derive(Debug)]
struct ClientCerts {
    /// `None`: any certificate (`RequestClientCert`, `RequireAnyClientCert`).
    verify: Option<Verify>,
    mandatory: bool,
    allowed_sans: Option<Vec<String>>,
    algorithms: WebPkiSupportedAlgorithms,
    hints: Vec<DistinguishedName>,
}

/// Verification against trust anchors.
#[derive(Debug)]
struct Verify {
    /// `None` when there is no trust anchor at all: every certificate is refused.
    webpki: Option<Arc<dyn ClientCertVerifier>>,
    /// The configured CA certificates (empty with the system's).
    anchors: Vec<CertificateDer<'static>>,
}

impl ClientCertVerifier for ClientCerts {
    fn client_auth_mandatory(&self) -> bool {
        self.mandatory
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &self.hints
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        if let Some(verify) = &self.verify {
            if verify
                .anchors
                .iter()
                .any(|a| a.as_ref() == end_entity.as_ref())
            {
                // A certificate that is itself a trust anchor: Go accepts it as
                // a chain of one; webpki refuses a CA as an end entity.
                check_anchor_as_client(end_entity, now)?;
            } else {
                let webpki = verify
                    .webpki
                    .as_ref()
                    .ok_or(rustls::Error::InvalidCertificate(
                        CertificateError::UnknownIssuer,
                    ))?;
                webpki.verify_client_cert(end_entity, intermediates, now)?;
            }
        }
        if let Some(allowed) = &self.allowed_sans {
            check_sans(end_entity, allowed)?;
        }
        Ok(ClientCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}

fn bad_certificate(error: CertificateError) -> rustls::Error {
    rustls::Error::InvalidCertificate(error)
}

/// What Go checks of a trust anchor presented as the client's certificate: that
/// it is valid now and, if it lists extended key usages, that client
/// authentication is among them.
fn check_anchor_as_client(der: &CertificateDer<'_>, now: UnixTime) -> Result<(), rustls::Error> {
    let (_, cert) = x509_parser::parse_x509_certificate(der.as_ref())
        .map_err(|_| bad_certificate(CertificateError::BadEncoding))?;
    let now = x509_parser::time::ASN1Time::from_timestamp(now.as_secs() as i64)
        .map_err(|_| bad_certificate(CertificateError::BadEncoding))?;
    let validity = cert.validity();
    if now < validity.not_before {
        return Err(bad_certificate(CertificateError::NotValidYet));
    }
    if now > validity.not_after {
        return Err(bad_certificate(CertificateError::Expired));
    }
    if let Ok(Some(eku)) = cert.extended_key_usage() {
        if !(eku.value.any || eku.value.client_auth) {
            return Err(bad_certificate(CertificateError::InvalidPurpose));
        }
    }
    Ok(())
}

/// `client_allowed_sans`: the certificate must carry one of the listed subject
/// alternative names (DNS name, e-mail address, IP address or URI, written as Go
/// writes them).
fn check_sans(der: &CertificateDer<'_>, allowed: &[String]) -> Result<(), rustls::Error> {
    use x509_parser::extensions::GeneralName;
    let (_, cert) = x509_parser::parse_x509_certificate(der.as_ref())
        .map_err(|_| bad_certificate(CertificateError::BadEncoding))?;
    let names = cert
        .subject_alternative_name()
        .ok()
        .flatten()
        .map(|ext| ext.value.general_names.clone())
        .unwrap_or_default();
    let listed = names.iter().any(|name| {
        let text = match name {
            GeneralName::DNSName(s) | GeneralName::RFC822Name(s) | GeneralName::URI(s) => {
                s.to_string()
            }
            GeneralName::IPAddress(bytes) => match bytes.len() {
                4 => std::net::Ipv4Addr::from(<[u8; 4]>::try_from(*bytes).unwrap_or([0; 4]))
                    .to_string(),
                16 => std::net::Ipv6Addr::from(<[u8; 16]>::try_from(*bytes).unwrap_or([0; 16]))
                    .to_string(),
                _ => return false,
            },
            _ => return false,
        };
        allowed.contains(&text)
    });
    if listed {
        Ok(())
    } else {
        Err(bad_certificate(
            CertificateError::ApplicationVerificationFailure,
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tls_versions() {
        let e = tls_version("f", Some(&"TLS10".into()), &rustls::version::TLS12).unwrap_err();
        assert!(e.to_string().contains("TLS10 is not supported"), "{e}");
        assert!(tls_version("f", Some(&"TLS11".into()), &rustls::version::TLS12).is_err());
        let e = tls_version("f", Some(&"TLS111".into()), &rustls::version::TLS12).unwrap_err();
        assert!(e.to_string().contains("unknown TLS version"), "{e}");
        let v = tls_version("f", Some(&"TLS13".into()), &rustls::version::TLS12).unwrap();
        assert_eq!(v.version, rustls::ProtocolVersion::TLSv1_3);
        let v = tls_version("f", None, &rustls::version::TLS12).unwrap();
        assert_eq!(v.version, rustls::ProtocolVersion::TLSv1_2);
    }

    fn suite_names(raw: &RawTls) -> Vec<String> {
        provider(raw)
            .unwrap()
            .cipher_suites
            .iter()
            .map(|s| format!("{:?}", s.suite()))
            .collect()
    }

    #[test]
    fn cipher_suites_govern_tls12_only() {
        let raw = RawTls {
            cipher_suites: Some(vec![
                "TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384".into(),
                "TLS_AES_128_GCM_SHA256".into(),
                "TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305".into(),
            ]),
            ..Default::default()
        };
        let names = suite_names(&raw);
        // All three TLS 1.3 suites stay, then the two TLS 1.2 ones in order.
        assert_eq!(names.len(), 5, "{names:?}");
        assert!(
            names[..3].iter().all(|n| n.starts_with("TLS13_")),
            "{names:?}"
        );
        assert_eq!(names[3], "TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384");
        assert_eq!(names[4], "TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256");
    }

    #[test]
    fn legacy_and_unknown_suites_are_refused_by_name() {
        for (bad, expected) in [
            ("TLS_RSA_WITH_AES_128_CBC_SHA", "not offered by rustls"),
            (
                "TLS_ECDHE_RSA_WITH_AES_128_CBC_SHA256",
                "not offered by rustls",
            ),
            ("TLS_RSA_WITH_RC4_128_SHA", "not offered by rustls"),
            ("TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA2048", "unknown cipher"),
        ] {
            let raw = RawTls {
                cipher_suites: Some(vec![bad.into()]),
                ..Default::default()
            };
            let e = provider(&raw).expect_err(bad).to_string();
            assert!(
                e.starts_with("tls_server_config.cipher_suites:")
                    && e.contains(bad)
                    && e.contains(expected),
                "{e}"
            );
        }
    }

    #[test]
    fn curves() {
        let raw = RawTls {
            curve_preferences: Some(vec!["CurveP256".into(), "X25519".into()]),
            ..Default::default()
        };
        assert_eq!(provider(&raw).unwrap().kx_groups.len(), 2);
        for (bad, expected) in [
            ("CurveP521", "not offered by rustls"),
            ("CurveP257", "unknown curve"),
        ] {
            let raw = RawTls {
                curve_preferences: Some(vec![bad.into()]),
                ..Default::default()
            };
            let e = provider(&raw).expect_err(bad).to_string();
            assert!(
                e.starts_with("tls_server_config.curve_preferences:") && e.contains(expected),
                "{e}"
            );
        }
    }

    fn certificate(sans: Vec<rcgen::SanType>, ca: bool) -> CertificateDer<'static> {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::default();
        params.subject_alt_names = sans;
        if ca {
            params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        }
        params.not_before = rcgen::date_time_ymd(2030, 1, 1);
        params.not_after = rcgen::date_time_ymd(2031, 1, 1);
        params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ClientAuth];
        params.self_signed(&key).unwrap().der().clone()
    }

    #[test]
    fn allowed_sans_match_every_kind_of_name_as_go_writes_it() {
        use rcgen::SanType;
        let cert = certificate(
            vec![
                SanType::DnsName("scraper.example".try_into().unwrap()),
                SanType::Rfc822Name("ops@example.net".try_into().unwrap()),
                SanType::IpAddress("10.1.2.3".parse().unwrap()),
                SanType::IpAddress("2001:db8::7".parse().unwrap()),
                SanType::URI("spiffe://example/prometheus".try_into().unwrap()),
            ],
            false,
        );
        for name in [
            "scraper.example",
            "ops@example.net",
            "10.1.2.3",
            "2001:db8::7",
            "spiffe://example/prometheus",
        ] {
            assert!(check_sans(&cert, &[name.to_string()]).is_ok(), "{name}");
        }
        for name in ["other.example", "10.1.2.4", "2001:0db8::7", ""] {
            assert!(check_sans(&cert, &[name.to_string()]).is_err(), "{name}");
        }
        assert!(
            check_sans(&cert, &[]).is_err(),
            "an empty list allows no one"
        );
    }

    #[test]
    fn a_trust_anchor_as_client_must_be_valid_now() {
        let cert = certificate(Vec::new(), true);
        // 1 June 2029, 2030 and 2032; the certificate is valid during 2030.
        let at = |seconds| UnixTime::since_unix_epoch(std::time::Duration::from_secs(seconds));
        assert!(check_anchor_as_client(&cert, at(1_906_502_400)).is_ok());
        assert!(matches!(
            check_anchor_as_client(&cert, at(1_874_966_400)),
            Err(rustls::Error::InvalidCertificate(
                CertificateError::NotValidYet
            ))
        ));
        assert!(matches!(
            check_anchor_as_client(&cert, at(1_969_660_800)),
            Err(rustls::Error::InvalidCertificate(CertificateError::Expired))
        ));
    }

    #[test]
    fn http2_rules_follow_go() {
        let tls12 = &rustls::version::TLS12;
        let with = |names: &[&str]| RawTls {
            cipher_suites: Some(names.iter().map(|n| n.to_string()).collect()),
            ..Default::default()
        };
        let lacking = with(&["TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384"]);
        let e = check_http2(&lacking, None, tls12).unwrap_err().to_string();
        assert!(e.contains("HTTP/2 requires"), "{e}");
        assert!(check_http2(&lacking, Some(false), tls12).is_ok());
        assert!(check_http2(&lacking, None, &rustls::version::TLS13).is_ok());
        let having = with(&["TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256"]);
        assert!(check_http2(&having, None, tls12).is_ok());
        assert!(check_http2(&RawTls::default(), None, tls12).is_ok());
        let e = check_http2(&RawTls::default(), Some(true), tls12)
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("http_server_config.http2:"), "{e}");
    }
}
