//! Synthetic segment bytes, shared by the integration tests and `benches/swarm.rs`.

use bytes::Bytes;

/// `len` distinct, non-trivial bytes for segment `n` (xorshift seeded by `n`).
pub fn payload(n: u64, len: usize) -> Bytes {
    let mut x = n.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    Bytes::from(
        (0..len)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect::<Vec<u8>>(),
    )
}
