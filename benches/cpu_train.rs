//! CPU training / inference throughput of the paper model: batch 16, 126 frames (2 s at
//! 16 kHz, hop 256), 128 mels, kernel 7, on 2 rayon threads.

use criterion::{criterion_group, criterion_main, Criterion};
use ser_engine::cpu::{cross_entropy, Adam, CpuModel, Input, Mode};
use ser_engine::model::ModelConfig;

fn bench(c: &mut Criterion) {
    ser_engine::cpu::alloc::keep_freed_memory();
    let _ = rayon::ThreadPoolBuilder::new()
        .num_threads(2)
        .build_global();
    let (b, t) = (16, 126);
    let cfg = ModelConfig::default();
    let x: Vec<f32> = (0..b * cfg.n_mels * t)
        .map(|i| ((i * 7919) % 1000) as f32 / 500.0 - 1.0)
        .collect();
    let lens = vec![t; b];
    let labels: Vec<usize> = (0..b).map(|i| i % cfg.classes).collect();
    let mut model = CpuModel::<f32>::new(cfg.clone(), 1);
    let mut adam = Adam::new(model.params.len(), 1e-4, 1e-5);
    let inp = Input {
        x: &x,
        batch: b,
        t_max: t,
        lengths: &lens,
    };
    let mut g = c.benchmark_group("cpu_b16_t126_k7");
    g.sample_size(10);
    g.throughput(criterion::Throughput::Elements(b as u64));
    let mut s = 0u32;
    g.bench_function("train_step", |bn| {
        bn.iter(|| {
            s += 1;
            model.zero_grads();
            let f = model.forward(&inp, Mode::Train { seed: 1, step: s });
            let (_, dl, _) = cross_entropy(&f.logits, &labels, cfg.classes, None, 0.0);
            model.backward(&f, &dl);
            adam.step(&mut model.params, &model.grads);
        })
    });
    g.bench_function("inference", |bn| {
        bn.iter(|| model.forward(&inp, Mode::Eval).logits)
    });
    g.finish();
    let (tr, inf) = ser_engine::cpu::bench::bench_train(b, t, 5, 7);
    println!("bench_train: {tr:.1} train samples/s, {inf:.1} inference samples/s");
}

criterion_group!(benches, bench);
criterion_main!(benches);
