//! Front-end throughput: `log_mel` on 10 s of synthetic audio at 16, 22.05, 44.1 and 48 kHz,
//! on one thread (the rayon pool is pinned to 1 so numbers compare with librosa's single core;
//! `ser-engine features --bench` also reports all cores). Criterion's "thrpt" column is in
//! samples/s; divide by the rate for audio-seconds per second.
//!
//!     cargo bench --bench features

use criterion::{black_box, criterion_group, criterion_main, Criterion, Throughput};
use ser_engine::features::{log_mel, MelConfig};
use ser_engine::rng::{Purpose, Stream};

fn clip(sr: u32, seconds: f32) -> Vec<f32> {
    let noise = Stream::new(1, Purpose::Test, sr);
    (0..(seconds * sr as f32) as usize)
        .map(|i| {
            let t = i as f32 / sr as f32;
            0.3 * (2.0 * std::f32::consts::PI * 220.0 * t).sin() + 0.05 * noise.normal(i as u64)
        })
        .collect()
}

fn bench(c: &mut Criterion) {
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(1)
        .build()
        .expect("pool");
    let cfg = MelConfig::default();
    let mut g = c.benchmark_group("log_mel_10s_1thread");
    g.sample_size(20);
    for sr in [16000u32, 22050, 44100, 48000] {
        let x = clip(sr, 10.0);
        g.throughput(Throughput::Elements(x.len() as u64));
        g.bench_function(format!("{sr}Hz"), |b| {
            pool.install(|| b.iter(|| black_box(log_mel(black_box(&x), sr, &cfg))))
        });
    }
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
