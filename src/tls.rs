//! QUIC/TLS configuration that authenticates every peer by its ed25519 key (being written).
