//! QUIC/TLS configuration that authenticates every peer by its ed25519 key.
//!
//! Both sides present an RFC 7250 raw public key (the SubjectPublicKeyInfo of
//! their ed25519 key) over TLS 1.3 with rustls' ring provider. The dialler pins
//! the key it expects; the acceptor takes any client that proves possession of
//! an ed25519 key and the application reads that key with [`peer_key`].
//!
//! Why raw public keys rather than self-signed certificates: a node's id *is*
//! its 32-byte key, so a certificate would only wrap that key in ASN.1 nobody
//! checks. With RPK the handshake signature is verified by rustls' own
//! [`rustls::crypto::verify_tls13_signature_with_raw_key`] against exactly the
//! key the peer claims, and no certificate-generation crate is needed.
//!
//! Session resumption and 0-RTT are off: every connection runs a full
//! handshake, so the key behind every connection was proven in that
//! connection, at the price of one signature per handshake.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use ed25519_dalek::pkcs8::EncodePrivateKey;
use ed25519_dalek::SigningKey;
use quinn::crypto::rustls::{NoInitialCipherSuite, QuicClientConfig, QuicServerConfig};
use quinn::{IdleTimeout, VarInt};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::{AlwaysResolvesClientRawPublicKeys, Resumption};
use rustls::crypto::{CryptoProvider, WebPkiSupportedAlgorithms};
use rustls::pki_types::{
    CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName, SubjectPublicKeyInfoDer,
    UnixTime,
};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::server::AlwaysResolvesServerRawPublicKeys;
use rustls::sign::CertifiedKey;
use rustls::{
    CertificateError, DigitallySignedStruct, DistinguishedName, PeerIncompatible, PeerMisbehaved,
    SignatureScheme,
};

/// The ALPN protocol id both sides require; a peer speaking anything else is refused.
pub const ALPN: &[u8] = b"starling/1";

/// The server name every dialler sends. Peers are identified by their pinned
/// key, not by name, but QUIC/TLS still requires a syntactically valid DNS
/// name; `.invalid` (RFC 2606) can never collide with a real host.
pub const SERVER_NAME: &str = "starling.invalid";

/// DER prefix of an ed25519 SubjectPublicKeyInfo (RFC 8410): SEQUENCE {
/// SEQUENCE { OID 1.3.101.112 }, BIT STRING (0 unused bits) }; the 32 key
/// bytes follow.
const ED25519_SPKI_PREFIX: [u8; 12] = [
    0x30, 0x2a, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x03, 0x21, 0x00,
];

/// Length of an ed25519 SubjectPublicKeyInfo in DER.
pub const ED25519_SPKI_LEN: usize = ED25519_SPKI_PREFIX.len() + 32;

/// Errors building TLS/QUIC configuration or endpoints.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// Our ed25519 key could not be encoded as PKCS#8.
    #[error("cannot encode the ed25519 key as PKCS#8: {0}")]
    KeyEncoding(String),
    /// rustls refused the key or the configuration.
    #[error("TLS configuration rejected: {0}")]
    Rustls(#[from] rustls::Error),
    /// The crypto provider offers no cipher suite QUIC can start with.
    #[error("no QUIC initial cipher suite: {0}")]
    NoInitialCipherSuite(#[from] NoInitialCipherSuite),
    /// The UDP socket could not be bound (address in use, no permission, no runtime).
    #[error("cannot bind QUIC endpoint to {addr}: {source}")]
    Bind {
        /// The address we tried to bind.
        addr: SocketAddr,
        /// Why binding failed.
        source: std::io::Error,
    },
}

/// Server side: accepts any client holding an ed25519 key (signature verified).
///
/// Read the client's key with [`peer_key`] once the connection is established.
pub fn server_config(key: &SigningKey) -> Result<quinn::ServerConfig, TlsError> {
    let provider = Arc::new(crypto_provider());
    let certified = certified_key(key, &provider)?;
    let verifier = Arc::new(Ed25519ClientVerifier::new(&provider));
    let mut tls = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_client_cert_verifier(verifier)
        .with_cert_resolver(Arc::new(AlwaysResolvesServerRawPublicKeys::new(certified)));
    tls.alpn_protocols = vec![ALPN.to_vec()];
    // No tickets: a resumed session would carry the client key over from an
    // earlier connection instead of proving it again.
    tls.send_tls13_tickets = 0;
    tls.max_early_data_size = 0;
    let quic = QuicServerConfig::try_from(tls)?;
    let mut config = quinn::ServerConfig::with_crypto(Arc::new(quic));
    config
        .transport_config(Arc::new(unadmitted_transport_config()))
        // 0-RTT is off, so nothing worth buffering arrives before a connection is accepted.
        .incoming_buffer_size(INCOMING_BUFFER)
        .incoming_buffer_size_total(INCOMING_BUFFER * INCOMING_MAX as u64)
        .max_incoming(INCOMING_MAX);
    Ok(config)
}

/// Client side: presents our key and accepts only a server whose key is `expected`.
///
/// Dial with `endpoint.connect_with(config, addr, SERVER_NAME)`.
pub fn client_config(
    key: &SigningKey,
    expected: [u8; 32],
) -> Result<quinn::ClientConfig, TlsError> {
    let provider = Arc::new(crypto_provider());
    let certified = certified_key(key, &provider)?;
    let verifier = Arc::new(PinnedServerVerifier::new(expected, &provider));
    let mut tls = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .dangerous() // only to install our own verifier; it checks key and signature
        .with_custom_certificate_verifier(verifier)
        .with_client_cert_resolver(Arc::new(AlwaysResolvesClientRawPublicKeys::new(certified)));
    tls.alpn_protocols = vec![ALPN.to_vec()];
    tls.resumption = Resumption::disabled();
    tls.enable_early_data = false;
    let quic = QuicClientConfig::try_from(tls)?;
    let mut config = quinn::ClientConfig::new(Arc::new(quic));
    config.transport_config(Arc::new(unadmitted_transport_config()));
    Ok(config)
}

/// The authenticated ed25519 key of the connection's peer.
///
/// `None` only if the handshake has not completed or the peer identity is not
/// an ed25519 raw public key (which our verifiers never accept).
pub fn peer_key(conn: &quinn::Connection) -> Option<[u8; 32]> {
    let identity = conn.peer_identity()?;
    let chain = identity.downcast::<Vec<CertificateDer<'static>>>().ok()?;
    match chain.as_slice() {
        [only] => key_from_spki(only.as_ref()),
        _ => None,
    }
}

/// This connection's TLS exporter bytes under [`crate::token::BINDING_LABEL`] (RFC 8446
/// section 7.5): the same at both ends of this connection and at no other, which a token
/// holder signs so that its proof is useless anywhere else.
///
/// `None` only before the handshake completes.
pub fn token_binding(conn: &quinn::Connection) -> Option<[u8; crate::token::BINDING_LEN]> {
    let mut out = [0u8; crate::token::BINDING_LEN];
    conn.export_keying_material(&mut out, crate::token::BINDING_LABEL, b"")
        .ok()?;
    Some(out)
}

/// Largest UDP payload path MTU discovery tries: a 1500-byte MTU less IPv4's 20-byte and
/// UDP's 8-byte headers.
pub const MTU_UPPER_BOUND: u16 = 1472;

/// The transport settings both sides use.
///
/// - Keep-alive every 2 s and a 10 s idle timeout: a vanished peer (or a
///   restarted broadcaster) is noticed within seconds, while a couple of lost
///   keep-alives do not kill a healthy connection.
/// - At most 64 concurrent bidirectional and 64 unidirectional streams per
///   peer: one control stream plus a stream per transfer needs far fewer, and
///   the cap bounds the per-stream state a peer can make us hold.
/// - 2 MiB per stream and 8 MiB per connection of receive window: at 100 ms
///   RTT that allows ~20 MB/s on one stream and ~80 MB/s per connection, well
///   above several MB/s of live media, while bounding how much a peer can make
///   us buffer (a few dozen partners stay within a few hundred MiB worst case).
pub fn transport_config() -> quinn::TransportConfig {
    let mut transport = quinn::TransportConfig::default();
    transport
        .keep_alive_interval(Some(KEEP_ALIVE))
        .max_idle_timeout(Some(IdleTimeout::from(VarInt::from_u32(IDLE_TIMEOUT_MS))))
        .max_concurrent_bidi_streams(VarInt::from_u32(MAX_STREAMS))
        .max_concurrent_uni_streams(VarInt::from_u32(MAX_STREAMS))
        .stream_receive_window(VarInt::from_u32(STREAM_WINDOW))
        .receive_window(VarInt::from_u32(CONNECTION_WINDOW))
        .send_window(u64::from(CONNECTION_WINDOW))
        // Starling sends no datagrams; unread ones would otherwise buffer 1.25 MB per peer.
        .datagram_receive_buffer_size(None);
    // Path MTU discovery may grow packets to what a 1500-byte Ethernet MTU carries over
    // IPv4 (quinn stops at 1452 by default): each packet's headers weigh on the media less
    // (the lab's offices: 1.198 and 1.201 copies across each WAN, from 1.230 and 1.212).
    // Probes that get no answer (IPv6, PPPoE, tunnels) leave the packets where they were.
    let mut mtu = quinn::MtuDiscoveryConfig::default();
    mtu.upper_bound(MTU_UPPER_BOUND);
    transport.mtu_discovery_config(Some(mtu));
    // Ask peers to acknowledge every 8th packet rather than every 2nd (out of order ones
    // still at once): in an office, the acknowledgements of what its viewers upload come
    // back across the WAN its media crosses (the lab's offices: a quarter fewer of those
    // packets each way, about 0.01 of a copy).
    let mut acks = quinn::AckFrequencyConfig::default();
    acks.ack_eliciting_threshold(VarInt::from_u32(ACK_EVERY - 1));
    transport.ack_frequency_config(Some(acks));
    transport
}

/// The transport settings of a connection whose peer has not yet passed the Hello: the
/// same as [`transport_config`] but with a receive window of [`UNADMITTED_WINDOW`] for the
/// whole connection, one bidirectional stream (the Hello's) and no unidirectional one, so
/// a peer that never sends a Hello can make us buffer at most that window.
/// [`admit`] opens the rest once the Hello is accepted.
pub fn unadmitted_transport_config() -> quinn::TransportConfig {
    let mut transport = transport_config();
    transport
        .max_concurrent_bidi_streams(VarInt::from_u32(1))
        .max_concurrent_uni_streams(VarInt::from_u32(0))
        .receive_window(VarInt::from_u32(UNADMITTED_WINDOW));
    transport
}

/// Opens an admitted connection's flow control to the full [`transport_config`]:
/// the connection receive window and the stream counts withheld before its Hello.
pub fn admit(conn: &quinn::Connection) {
    conn.set_receive_window(VarInt::from_u32(CONNECTION_WINDOW));
    conn.set_max_concurrent_bi_streams(VarInt::from_u32(MAX_STREAMS));
    conn.set_max_concurrent_uni_streams(VarInt::from_u32(MAX_STREAMS));
}

/// Packets a peer may receive before it must acknowledge them (when none come out of order).
pub const ACK_EVERY: u32 = 8;

/// Interval between keep-alive packets.
const KEEP_ALIVE: Duration = Duration::from_secs(2);
/// Idle timeout in milliseconds (QUIC's unit for it).
const IDLE_TIMEOUT_MS: u32 = 10_000;
/// Concurrent streams of each direction a peer may open.
const MAX_STREAMS: u32 = 64;
/// Per-stream receive window in bytes.
const STREAM_WINDOW: u32 = 2 * 1024 * 1024;
/// Per-connection receive (and send) window in bytes.
const CONNECTION_WINDOW: u32 = 8 * 1024 * 1024;
/// Receive window of a whole connection before its Hello is accepted: a Hello is at most
/// [`crate::wire::MAX_CONTROL_FRAME`] (16 KiB), so this leaves room for one and little more.
pub const UNADMITTED_WINDOW: u32 = 32 * 1024;
/// Bytes quinn may buffer for one connection attempt not yet accepted.
const INCOMING_BUFFER: u64 = 16 * 1024;
/// Connection attempts quinn queues before the accept loop takes them (which refuses
/// those over its own caps at once).
const INCOMING_MAX: usize = 1024;

/// A QUIC endpoint bound to `bind` that accepts peers (with [`server_config`])
/// and can dial them (pass [`client_config`] to `connect_with`).
///
/// Must be called inside a tokio runtime.
pub fn endpoint(key: &SigningKey, bind: SocketAddr) -> Result<quinn::Endpoint, TlsError> {
    let config = server_config(key)?;
    quinn::Endpoint::server(config, bind).map_err(|source| TlsError::Bind { addr: bind, source })
}

/// The ed25519 SubjectPublicKeyInfo DER for a 32-byte public key: what we
/// present as our raw public key.
pub fn spki_from_key(public: &[u8; 32]) -> [u8; ED25519_SPKI_LEN] {
    let mut out = [0u8; ED25519_SPKI_LEN];
    let (prefix, key) = out.split_at_mut(ED25519_SPKI_PREFIX.len());
    prefix.copy_from_slice(&ED25519_SPKI_PREFIX);
    key.copy_from_slice(public);
    out
}

/// The 32-byte ed25519 key inside a SubjectPublicKeyInfo, or `None` if `spki`
/// is anything but an ed25519 SPKI of exactly the right length.
pub fn key_from_spki(spki: &[u8]) -> Option<[u8; 32]> {
    let key = spki.strip_prefix(ED25519_SPKI_PREFIX.as_slice())?;
    key.try_into().ok()
}

/// The crypto provider every config uses: ring, as shipped by rustls.
///
/// Passed explicitly to each builder so no process-wide default is consulted.
pub fn crypto_provider() -> CryptoProvider {
    rustls::crypto::ring::default_provider()
}

/// Our key as rustls presents it: the SPKI as the "certificate" and the ring
/// signer loaded from the PKCS#8 encoding of the dalek key.
pub fn certified_key(
    key: &SigningKey,
    provider: &CryptoProvider,
) -> Result<Arc<CertifiedKey>, TlsError> {
    let pkcs8 = key
        .to_pkcs8_der()
        .map_err(|e| TlsError::KeyEncoding(e.to_string()))?;
    let der = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(pkcs8.as_bytes().to_vec()));
    let signer = provider.key_provider.load_private_key(der)?;
    let spki = spki_from_key(key.verifying_key().as_bytes());
    // Guards against a signer whose public key is not the one we present.
    // (`CertifiedKey::keys_match` parses an X.509 certificate, so it cannot
    // be used for a raw public key.)
    match signer.public_key() {
        Some(signer_spki) if signer_spki.as_ref() == spki.as_slice() => {}
        _ => {
            return Err(
                rustls::Error::InconsistentKeys(rustls::InconsistentKeys::KeyMismatch).into(),
            )
        }
    }
    let certified = CertifiedKey::new(vec![CertificateDer::from(spki.to_vec())], signer);
    Ok(Arc::new(certified))
}

/// Dialler-side verifier: the server must present exactly the pinned ed25519
/// key and sign the handshake with it.
#[derive(Debug)]
pub struct PinnedServerVerifier {
    /// The only server key we accept.
    expected: [u8; 32],
    /// Signature algorithms of our provider, used by rustls' signature check.
    algorithms: WebPkiSupportedAlgorithms,
}

impl PinnedServerVerifier {
    /// A verifier that accepts only a server holding `expected`.
    pub fn new(expected: [u8; 32], provider: &CryptoProvider) -> Self {
        Self {
            expected,
            algorithms: provider.signature_verification_algorithms,
        }
    }
}

impl ServerCertVerifier for PinnedServerVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let key = single_ed25519_key(end_entity, intermediates)?;
        if key != self.expected {
            return Err(CertificateError::ApplicationVerificationFailure.into());
        }
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        _message: &[u8],
        _cert: &CertificateDer<'_>,
        _dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Err(PeerIncompatible::Tls13RequiredForQuic.into())
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_ed25519_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        vec![SignatureScheme::ED25519]
    }

    fn requires_raw_public_keys(&self) -> bool {
        true
    }
}

/// Acceptor-side verifier: any client must present an ed25519 raw public key
/// and sign the handshake with it; which key is the application's business.
#[derive(Debug)]
pub struct Ed25519ClientVerifier {
    /// Signature algorithms of our provider, used by rustls' signature check.
    algorithms: WebPkiSupportedAlgorithms,
}

impl Ed25519ClientVerifier {
    /// A verifier that accepts any client proving possession of an ed25519 key.
    pub fn new(provider: &CryptoProvider) -> Self {
        Self {
            algorithms: provider.signature_verification_algorithms,
        }
    }
}

impl ClientCertVerifier for Ed25519ClientVerifier {
    fn offer_client_auth(&self) -> bool {
        true
    }

    fn client_auth_mandatory(&self) -> bool {
        true
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &[]
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        single_ed25519_key(end_entity, intermediates)?;
        Ok(ClientCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        _message: &[u8],
        _cert: &CertificateDer<'_>,
        _dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Err(PeerIncompatible::Tls13RequiredForQuic.into())
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_ed25519_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        vec![SignatureScheme::ED25519]
    }

    fn requires_raw_public_keys(&self) -> bool {
        true
    }
}

/// The ed25519 key of a presented identity that must be one SPKI and nothing else.
fn single_ed25519_key(
    end_entity: &CertificateDer<'_>,
    intermediates: &[CertificateDer<'_>],
) -> Result<[u8; 32], rustls::Error> {
    if !intermediates.is_empty() {
        return Err(CertificateError::BadEncoding.into());
    }
    strong_key_from_spki(end_entity.as_ref()).ok_or_else(|| CertificateError::BadEncoding.into())
}

/// [`key_from_spki`], and only a valid ed25519 point not of small order: ring's handshake
/// check accepts R = identity, S = 0 from a small-order key for any transcript, so anyone
/// could "prove" such a key without a secret.
fn strong_key_from_spki(spki: &[u8]) -> Option<[u8; 32]> {
    let key = key_from_spki(spki)?;
    let point = ed25519_dalek::VerifyingKey::from_bytes(&key).ok()?;
    (!point.is_weak()).then_some(key)
}

/// Checks a TLS 1.3 handshake signature: scheme must be ed25519, the key an
/// ed25519 SPKI, and the signature valid under rustls' own raw-key check.
fn verify_ed25519_signature(
    message: &[u8],
    cert: &CertificateDer<'_>,
    dss: &DigitallySignedStruct,
    algorithms: &WebPkiSupportedAlgorithms,
) -> Result<HandshakeSignatureValid, rustls::Error> {
    if dss.scheme != SignatureScheme::ED25519 {
        return Err(PeerMisbehaved::SignedHandshakeWithUnadvertisedSigScheme.into());
    }
    if strong_key_from_spki(cert.as_ref()).is_none() {
        return Err(CertificateError::BadEncoding.into());
    }
    let spki = SubjectPublicKeyInfoDer::from(cert.as_ref());
    rustls::crypto::verify_tls13_signature_with_raw_key(message, &spki, dss, algorithms)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // tests may unwrap (team standard)
mod tests {
    use super::*;

    fn key(seed: u8) -> SigningKey {
        SigningKey::from_bytes(&[seed; 32])
    }

    #[test]
    fn spki_round_trips() {
        let public = *key(1).verifying_key().as_bytes();
        let spki = spki_from_key(&public);
        assert_eq!(spki.len(), ED25519_SPKI_LEN);
        assert_eq!(key_from_spki(&spki), Some(public));
    }

    #[test]
    fn spki_matches_pkcs8_crate_encoding() {
        use ed25519_dalek::pkcs8::EncodePublicKey;
        let verifying = key(2).verifying_key();
        let reference = verifying.to_public_key_der().unwrap();
        assert_eq!(
            spki_from_key(verifying.as_bytes()).as_slice(),
            reference.as_bytes()
        );
    }

    #[test]
    fn spki_rejects_wrong_length() {
        let spki = spki_from_key(key(3).verifying_key().as_bytes());
        assert_eq!(key_from_spki(&spki[..ED25519_SPKI_LEN - 1]), None);
        let mut longer = spki.to_vec();
        longer.push(0);
        assert_eq!(key_from_spki(&longer), None);
        assert_eq!(key_from_spki(&[]), None);
        assert_eq!(key_from_spki(&ED25519_SPKI_PREFIX), None);
    }

    #[test]
    fn spki_rejects_wrong_prefix() {
        let spki = spki_from_key(key(4).verifying_key().as_bytes());
        for i in 0..ED25519_SPKI_PREFIX.len() {
            let mut bad = spki;
            bad[i] ^= 0x01;
            assert_eq!(key_from_spki(&bad), None, "flipped prefix byte {i}");
        }
    }

    #[test]
    fn certified_key_presents_our_spki() {
        let k = key(5);
        let certified = certified_key(&k, &crypto_provider()).unwrap();
        let cert = certified.end_entity_cert().unwrap();
        assert_eq!(
            key_from_spki(cert.as_ref()),
            Some(*k.verifying_key().as_bytes())
        );
    }

    #[test]
    fn pinned_verifier_checks_key() {
        let provider = crypto_provider();
        let expected = *key(6).verifying_key().as_bytes();
        let verifier = PinnedServerVerifier::new(expected, &provider);
        let name = ServerName::try_from(SERVER_NAME).unwrap();
        let now = UnixTime::now();
        let good = CertificateDer::from(spki_from_key(&expected).to_vec());
        assert!(verifier
            .verify_server_cert(&good, &[], &name, &[], now)
            .is_ok());
        let other = CertificateDer::from(spki_from_key(key(7).verifying_key().as_bytes()).to_vec());
        assert!(verifier
            .verify_server_cert(&other, &[], &name, &[], now)
            .is_err());
        // Right key but extra chain entries: not a raw public key.
        assert!(verifier
            .verify_server_cert(&good, std::slice::from_ref(&good), &name, &[], now)
            .is_err());
        let garbage = CertificateDer::from(vec![0u8; ED25519_SPKI_LEN]);
        assert!(verifier
            .verify_server_cert(&garbage, &[], &name, &[], now)
            .is_err());
    }

    #[test]
    fn client_verifier_requires_ed25519_spki() {
        let verifier = Ed25519ClientVerifier::new(&crypto_provider());
        let now = UnixTime::now();
        let good = CertificateDer::from(spki_from_key(key(8).verifying_key().as_bytes()).to_vec());
        assert!(verifier.verify_client_cert(&good, &[], now).is_ok());
        let truncated = CertificateDer::from(good.as_ref()[..40].to_vec());
        assert!(verifier.verify_client_cert(&truncated, &[], now).is_err());
        assert!(verifier.client_auth_mandatory());
        assert!(verifier.requires_raw_public_keys());
    }
}
