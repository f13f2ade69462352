//! Loopback tests of `starling::tls`: real QUIC handshakes on 127.0.0.1 that
//! must succeed only when both sides prove the key they present.
#![allow(clippy::unwrap_used)] // tests may unwrap (team standard)

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;

use ed25519_dalek::SigningKey;
use quinn::crypto::rustls::{QuicClientConfig, QuicServerConfig};
use rustls::client::AlwaysResolvesClientRawPublicKeys;
use rustls::pki_types::CertificateDer;
use rustls::server::AlwaysResolvesServerRawPublicKeys;
use rustls::sign::CertifiedKey;
use starling::tls::{
    certified_key, client_config, crypto_provider, endpoint, peer_key, server_config,
    spki_from_key, transport_config, Ed25519ClientVerifier, PinnedServerVerifier, TlsError, ALPN,
    SERVER_NAME,
};

fn key(seed: u8) -> SigningKey {
    SigningKey::from_bytes(&[seed; 32])
}

fn public(key: &SigningKey) -> [u8; 32] {
    *key.verifying_key().as_bytes()
}

fn loopback() -> SocketAddr {
    SocketAddr::from((Ipv4Addr::LOCALHOST, 0))
}

/// Accepts one incoming connection and returns the handshake result.
async fn accept_one(server: &quinn::Endpoint) -> Result<quinn::Connection, quinn::ConnectionError> {
    let incoming = server.accept().await.expect("endpoint closed");
    incoming.await
}

/// A rustls key whose presented SPKI claims `claimed` but whose signer is `signer`.
fn impostor_key(claimed: &SigningKey, signer: &SigningKey) -> Arc<CertifiedKey> {
    let provider = crypto_provider();
    let real = certified_key(signer, &provider).unwrap();
    let spki = spki_from_key(&public(claimed));
    Arc::new(CertifiedKey::new(
        vec![CertificateDer::from(spki.to_vec())],
        real.key.clone(),
    ))
}

/// A server config like `server_config`, but presenting `certified`.
fn server_config_presenting(certified: Arc<CertifiedKey>) -> quinn::ServerConfig {
    let provider = Arc::new(crypto_provider());
    let verifier = Arc::new(Ed25519ClientVerifier::new(&provider));
    let mut tls = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .with_client_cert_verifier(verifier)
        .with_cert_resolver(Arc::new(AlwaysResolvesServerRawPublicKeys::new(certified)));
    tls.alpn_protocols = vec![ALPN.to_vec()];
    let mut config =
        quinn::ServerConfig::with_crypto(Arc::new(QuicServerConfig::try_from(tls).unwrap()));
    config.transport_config(Arc::new(transport_config()));
    config
}

/// A client config like `client_config`, but presenting `certified` (or no key at all).
fn client_config_presenting(
    certified: Option<Arc<CertifiedKey>>,
    expected: [u8; 32],
) -> quinn::ClientConfig {
    let provider = Arc::new(crypto_provider());
    let verifier = Arc::new(PinnedServerVerifier::new(expected, &provider));
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .dangerous()
        .with_custom_certificate_verifier(verifier);
    let mut tls = match certified {
        Some(certified) => builder
            .with_client_cert_resolver(Arc::new(AlwaysResolvesClientRawPublicKeys::new(certified))),
        None => builder.with_no_client_auth(),
    };
    tls.alpn_protocols = vec![ALPN.to_vec()];
    let mut config = quinn::ClientConfig::new(Arc::new(QuicClientConfig::try_from(tls).unwrap()));
    config.transport_config(Arc::new(transport_config()));
    config
}

#[tokio::test]
async fn mutual_handshake_shows_each_side_the_others_key() {
    let (server_key, client_key) = (key(1), key(2));
    let server = endpoint(&server_key, loopback()).unwrap();
    let client = endpoint(&client_key, loopback()).unwrap();
    let addr = server.local_addr().unwrap();

    let config = client_config(&client_key, public(&server_key)).unwrap();
    let connecting = client.connect_with(config, addr, SERVER_NAME).unwrap();
    let (dialled, accepted) = tokio::join!(connecting, accept_one(&server));
    let (dialled, accepted) = (dialled.unwrap(), accepted.unwrap());

    assert_eq!(peer_key(&dialled), Some(public(&server_key)));
    assert_eq!(peer_key(&accepted), Some(public(&client_key)));
    let alpn = accepted
        .handshake_data()
        .unwrap()
        .downcast::<quinn::crypto::rustls::HandshakeData>()
        .unwrap()
        .protocol;
    assert_eq!(alpn.as_deref(), Some(ALPN));
}

#[tokio::test]
async fn bidirectional_stream_round_trips() {
    let (server_key, client_key) = (key(3), key(4));
    let server = endpoint(&server_key, loopback()).unwrap();
    let client = endpoint(&client_key, loopback()).unwrap();
    let addr = server.local_addr().unwrap();

    // Large enough to need several flow-control updates, not just one packet.
    let request: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
    let expected_reply: Vec<u8> = request.iter().rev().copied().collect();

    let serve = async {
        let conn = accept_one(&server).await.unwrap();
        let (mut send, mut recv) = conn.accept_bi().await.unwrap();
        let mut got = recv.read_to_end(1 << 20).await.unwrap();
        got.reverse();
        send.write_all(&got).await.unwrap();
        send.finish().unwrap();
        // Keep the connection until the client has read everything.
        conn.closed().await;
    };
    let dial = async {
        let config = client_config(&client_key, public(&server_key)).unwrap();
        let conn = client
            .connect_with(config, addr, SERVER_NAME)
            .unwrap()
            .await
            .unwrap();
        let (mut send, mut recv) = conn.open_bi().await.unwrap();
        send.write_all(&request).await.unwrap();
        send.finish().unwrap();
        let reply = recv.read_to_end(1 << 20).await.unwrap();
        conn.close(0u32.into(), b"done");
        reply
    };
    let ((), reply) = tokio::join!(serve, dial);
    assert_eq!(reply, expected_reply);
}

#[tokio::test]
async fn dialling_with_wrong_expected_key_fails_on_both_sides() {
    let (server_key, client_key, stranger) = (key(5), key(6), key(7));
    let server = endpoint(&server_key, loopback()).unwrap();
    let client = endpoint(&client_key, loopback()).unwrap();
    let addr = server.local_addr().unwrap();

    let config = client_config(&client_key, public(&stranger)).unwrap();
    let connecting = client.connect_with(config, addr, SERVER_NAME).unwrap();
    let (dialled, accepted) = tokio::join!(connecting, accept_one(&server));
    assert!(dialled.is_err(), "client accepted an unpinned server key");
    assert!(accepted.is_err(), "server completed a refused handshake");
}

#[tokio::test]
async fn a_different_server_at_the_address_is_refused() {
    // The client pins the broadcaster, but someone else answers at the address.
    let (broadcaster, other, client_key) = (key(8), key(9), key(10));
    let server = endpoint(&other, loopback()).unwrap();
    let client = endpoint(&client_key, loopback()).unwrap();
    let addr = server.local_addr().unwrap();

    let config = client_config(&client_key, public(&broadcaster)).unwrap();
    let connecting = client.connect_with(config, addr, SERVER_NAME).unwrap();
    let (dialled, _accepted) = tokio::join!(connecting, accept_one(&server));
    assert!(dialled.is_err());

    // The same client key dialling with the right pin succeeds, so the failure
    // above was the pin and nothing else.
    let config = client_config(&client_key, public(&other)).unwrap();
    let connecting = client.connect_with(config, addr, SERVER_NAME).unwrap();
    let (dialled, accepted) = tokio::join!(connecting, accept_one(&server));
    assert_eq!(peer_key(&dialled.unwrap()), Some(public(&other)));
    assert!(accepted.is_ok());
}

#[tokio::test]
async fn server_claiming_a_key_it_cannot_sign_with_is_refused() {
    // Presents the pinned key's SPKI but signs with another key: only the
    // handshake signature check can catch this.
    let (pinned, actual, client_key) = (key(11), key(12), key(13));
    let server_config = server_config_presenting(impostor_key(&pinned, &actual));
    let server = quinn::Endpoint::server(server_config, loopback()).unwrap();
    let client = endpoint(&client_key, loopback()).unwrap();
    let addr = server.local_addr().unwrap();

    let config = client_config(&client_key, public(&pinned)).unwrap();
    let connecting = client.connect_with(config, addr, SERVER_NAME).unwrap();
    let (dialled, _accepted) = tokio::join!(connecting, accept_one(&server));
    assert!(
        dialled.is_err(),
        "client accepted a forged server signature"
    );
}

#[tokio::test]
async fn client_claiming_a_key_it_cannot_sign_with_is_refused() {
    let (server_key, claimed, actual) = (key(14), key(15), key(16));
    let server = endpoint(&server_key, loopback()).unwrap();
    let client = endpoint(&actual, loopback()).unwrap();
    let addr = server.local_addr().unwrap();

    let config =
        client_config_presenting(Some(impostor_key(&claimed, &actual)), public(&server_key));
    let connecting = client.connect_with(config, addr, SERVER_NAME).unwrap();
    let (dialled, accepted) = tokio::join!(connecting, accept_one(&server));
    assert!(
        accepted.is_err(),
        "server accepted a forged client signature"
    );
    // The client may finish its side before the server's refusal arrives;
    // if so, the connection must then die rather than carry data.
    if let Ok(conn) = dialled {
        assert!(conn.accept_uni().await.is_err());
    }
}

#[tokio::test]
async fn client_without_a_key_is_refused() {
    let (server_key, client_key) = (key(17), key(18));
    let server = endpoint(&server_key, loopback()).unwrap();
    let client = endpoint(&client_key, loopback()).unwrap();
    let addr = server.local_addr().unwrap();

    let config = client_config_presenting(None, public(&server_key));
    let connecting = client.connect_with(config, addr, SERVER_NAME).unwrap();
    let (_dialled, accepted) = tokio::join!(connecting, accept_one(&server));
    assert!(accepted.is_err(), "server accepted a client with no key");
}

/// Offers to authenticate with a raw public key, then presents none.
#[derive(Debug)]
struct OffersKeyButSendsNone;

impl rustls::client::ResolvesClientCert for OffersKeyButSendsNone {
    fn resolve(
        &self,
        _root_hint_subjects: &[&[u8]],
        _sigschemes: &[rustls::SignatureScheme],
    ) -> Option<Arc<CertifiedKey>> {
        None
    }

    fn only_raw_public_keys(&self) -> bool {
        true
    }

    fn has_certs(&self) -> bool {
        true
    }
}

#[tokio::test]
async fn client_sending_an_empty_certificate_is_refused() {
    // Unlike a client that never offers a key, this one gets past the
    // certificate-type negotiation, so only mandatory client auth stops it.
    let server_key = key(23);
    let server = endpoint(&server_key, loopback()).unwrap();
    let client = quinn::Endpoint::client(loopback()).unwrap();
    let addr = server.local_addr().unwrap();

    let provider = Arc::new(crypto_provider());
    let verifier = Arc::new(PinnedServerVerifier::new(public(&server_key), &provider));
    let mut tls = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_client_cert_resolver(Arc::new(OffersKeyButSendsNone));
    tls.alpn_protocols = vec![ALPN.to_vec()];
    let config = quinn::ClientConfig::new(Arc::new(QuicClientConfig::try_from(tls).unwrap()));

    let connecting = client.connect_with(config, addr, SERVER_NAME).unwrap();
    let (_dialled, accepted) = tokio::join!(connecting, accept_one(&server));
    assert!(accepted.is_err(), "server accepted a client with no key");
}

#[tokio::test]
async fn server_config_alone_serves_a_plain_quinn_endpoint() {
    // `server_config` is usable without the `endpoint` helper.
    let (server_key, client_key) = (key(19), key(20));
    let server = quinn::Endpoint::server(server_config(&server_key).unwrap(), loopback()).unwrap();
    let client = quinn::Endpoint::client(loopback()).unwrap();
    let addr = server.local_addr().unwrap();

    let config = client_config(&client_key, public(&server_key)).unwrap();
    let connecting = client.connect_with(config, addr, SERVER_NAME).unwrap();
    let (dialled, accepted) = tokio::join!(connecting, accept_one(&server));
    assert_eq!(peer_key(&dialled.unwrap()), Some(public(&server_key)));
    assert_eq!(peer_key(&accepted.unwrap()), Some(public(&client_key)));
}

#[tokio::test]
async fn binding_a_used_port_names_the_address() {
    let first = endpoint(&key(21), loopback()).unwrap();
    let taken = first.local_addr().unwrap();
    match endpoint(&key(22), taken) {
        Err(TlsError::Bind { addr, source }) => {
            assert_eq!(addr, taken);
            assert_eq!(source.kind(), std::io::ErrorKind::AddrInUse);
            let message = TlsError::Bind { addr, source }.to_string();
            assert!(message.contains(&taken.to_string()), "{message}");
        }
        Err(other) => panic!("wrong error: {other}"),
        Ok(_) => panic!("bound a port that was already in use"),
    }
}

/// The identity point as an ed25519 public key (y = 1): of small order, so the lax check
/// accepts R = identity, S = 0 as its signature of any message.
const SMALL_ORDER_KEY: [u8; 32] = {
    let mut k = [0u8; 32];
    k[0] = 1;
    k
};

/// Signs every message with R = identity, S = 0: a "signature" by [`SMALL_ORDER_KEY`]
/// that needs no secret.
#[derive(Debug)]
struct SmallOrderSigner;

impl rustls::sign::SigningKey for SmallOrderSigner {
    fn choose_scheme(
        &self,
        offered: &[rustls::SignatureScheme],
    ) -> Option<Box<dyn rustls::sign::Signer>> {
        offered
            .contains(&rustls::SignatureScheme::ED25519)
            .then(|| Box::new(SmallOrderSigner) as Box<dyn rustls::sign::Signer>)
    }

    fn algorithm(&self) -> rustls::SignatureAlgorithm {
        rustls::SignatureAlgorithm::ED25519
    }
}

impl rustls::sign::Signer for SmallOrderSigner {
    fn sign(&self, _message: &[u8]) -> Result<Vec<u8>, rustls::Error> {
        let mut sig = vec![0u8; 64];
        sig[0] = 1;
        Ok(sig)
    }

    fn scheme(&self) -> rustls::SignatureScheme {
        rustls::SignatureScheme::ED25519
    }
}

/// A rustls key presenting [`SMALL_ORDER_KEY`], "signing" with [`SmallOrderSigner`].
fn small_order_key() -> Arc<CertifiedKey> {
    Arc::new(CertifiedKey::new(
        vec![CertificateDer::from(
            spki_from_key(&SMALL_ORDER_KEY).to_vec(),
        )],
        Arc::new(SmallOrderSigner),
    ))
}

#[tokio::test]
async fn a_small_order_key_proves_nothing_either_way() {
    // A client claiming the small-order key: the acceptor refuses it.
    let server_key = key(24);
    let server = endpoint(&server_key, loopback()).unwrap();
    let client = quinn::Endpoint::client(loopback()).unwrap();
    let addr = server.local_addr().unwrap();
    let config = client_config_presenting(Some(small_order_key()), public(&server_key));
    let connecting = client.connect_with(config, addr, SERVER_NAME).unwrap();
    let (dialled, accepted) = tokio::join!(connecting, accept_one(&server));
    assert!(
        accepted.is_err(),
        "the acceptor took a small-order client key"
    );
    if let Ok(conn) = dialled {
        assert!(conn.accept_uni().await.is_err());
    }
    // A server answering as the small-order key, which a hostile peer could hand out in
    // peer exchange: the dialler that pins it refuses it.
    let server =
        quinn::Endpoint::server(server_config_presenting(small_order_key()), loopback()).unwrap();
    let client = endpoint(&key(25), loopback()).unwrap();
    let addr = server.local_addr().unwrap();
    let config = client_config(&key(25), SMALL_ORDER_KEY).unwrap();
    let connecting = client.connect_with(config, addr, SERVER_NAME).unwrap();
    let (dialled, _accepted) = tokio::join!(connecting, accept_one(&server));
    assert!(
        dialled.is_err(),
        "the dialler took a small-order server key"
    );
}
