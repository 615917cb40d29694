//! Parity kernel throughput: the kernel this CPU dispatches to, side by side
//! with the portable one. Throughput counts the source data bytes.
//!
//! `cargo bench -p bdev_raid --bench parity`

use std::hint::black_box;
use std::time::Duration;

use bdev_raid::parity::Kernel;
use criterion::{criterion_group, criterion_main, Criterion, Throughput};

/// Strip size of every block.
const LEN: usize = 64 * 1024;

/// Deterministic, incompressible-looking blocks.
fn blocks(n: usize, seed: u64) -> Vec<Vec<u8>> {
    let mut x = seed | 1;
    (0..n)
        .map(|_| {
            (0..LEN)
                .map(|_| {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    x as u8
                })
                .collect()
        })
        .collect()
}

/// The dispatched kernel and the portable one (once, if they are the same).
fn kernels() -> Vec<(String, &'static Kernel)> {
    let det = Kernel::detected();
    let port = Kernel::portable();
    let mut v = vec![(format!("dispatched-{}", det.name()), det)];
    if det.name() != port.name() {
        v.push(("portable".to_string(), port));
    }
    v
}

fn xor(c: &mut Criterion) {
    let srcs = blocks(4, 1);
    let refs: Vec<&[u8]> = srcs.iter().map(|b| &b[..]).collect();
    let mut dst = vec![0u8; LEN];
    let mut g = c.benchmark_group("xor_gen 4x64KiB");
    g.throughput(Throughput::Bytes((4 * LEN) as u64));
    for (name, k) in kernels() {
        g.bench_function(name, |b| {
            b.iter(|| k.xor_gen(black_box(&mut dst), black_box(&refs)))
        });
    }
    g.finish();
}

fn gen_pq(c: &mut Criterion) {
    let data = blocks(6, 2);
    let refs: Vec<&[u8]> = data.iter().map(|b| &b[..]).collect();
    let (mut p, mut q) = (vec![0u8; LEN], vec![0u8; LEN]);
    let mut g = c.benchmark_group("gen_pq 6x64KiB");
    g.throughput(Throughput::Bytes((6 * LEN) as u64));
    for (name, k) in kernels() {
        g.bench_function(name, |b| {
            b.iter(|| k.gen_pq(black_box(&refs), black_box(&mut p), black_box(&mut q)))
        });
    }
    g.finish();
}

fn recover_2data(c: &mut Criterion) {
    let mut stripe = blocks(6, 3);
    let (mut p, mut q) = (vec![0u8; LEN], vec![0u8; LEN]);
    {
        let refs: Vec<&[u8]> = stripe.iter().map(|b| &b[..]).collect();
        Kernel::portable().gen_pq(&refs, &mut p, &mut q);
    }
    stripe.push(p);
    stripe.push(q);
    let good = stripe.clone();
    let mut g = c.benchmark_group("raid6_recover 2 data of 6x64KiB");
    g.throughput(Throughput::Bytes((6 * LEN) as u64));
    for (name, k) in kernels() {
        // Each iteration rebuilds data slots 1 and 4 from the rest (their
        // old contents, the previous iteration's output, are ignored).
        let mut v: Vec<&mut [u8]> = stripe.iter_mut().map(|b| &mut b[..]).collect();
        g.bench_function(name, |b| {
            b.iter(|| k.raid6_recover(black_box(&mut v), black_box(&[1, 4])))
        });
    }
    g.finish();
    assert!(stripe == good, "recovery bench corrupted the stripe");
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3))
        .sample_size(20);
    targets = xor, gen_pq, recover_2data
}
criterion_main!(benches);
