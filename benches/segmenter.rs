//! Throughput of the pure MPEG-TS paths: segmenting a fixture (whole, and in
//! 1316-byte pieces as UDP/pipes deliver it), restamping, and `pts_span`.
//! Run: cargo bench --bench segmenter

use std::time::Duration;

use criterion::{criterion_main, BatchSize, Criterion, Throughput};
use starling::ts::{pts_span, Restamper, Segmenter};

fn fixture(name: &str) -> Vec<u8> {
    let path = format!("{}/tests/fixtures/{name}.ts", env!("CARGO_MANIFEST_DIR"));
    std::fs::read(&path).unwrap_or_else(|e| panic!("{path}: {e}"))
}

fn segment(data: &[u8], piece: usize) -> usize {
    let mut s = Segmenter::new(Duration::from_secs(2));
    let mut n = 0;
    for chunk in data.chunks(piece) {
        n += s.push(chunk).len();
    }
    n + usize::from(s.finish().is_some())
}

fn benches(c: &mut Criterion) {
    let data = fixture("h264");
    let mut g = c.benchmark_group("ts");
    g.throughput(Throughput::Bytes(data.len() as u64));
    g.bench_function("segment_whole", |b| b.iter(|| segment(&data, data.len())));
    g.bench_function("segment_1316", |b| b.iter(|| segment(&data, 1316)));
    g.bench_function("restamp", |b| {
        b.iter_batched(
            || data.clone(),
            |mut copy| {
                let mut r = Restamper::new();
                r.set_offset(540_000);
                r.apply(&mut copy);
                copy
            },
            BatchSize::LargeInput,
        )
    });
    g.bench_function("pts_span", |b| b.iter(|| pts_span(&data)));
    g.finish();
}

// The macro defines an undocumented pub fn.
#[allow(missing_docs)]
mod group {
    criterion::criterion_group!(group, super::benches);
}
use group::group;

criterion_main!(group);
