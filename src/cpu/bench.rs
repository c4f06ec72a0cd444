//! CPU throughput measurement: training steps (forward + backward + Adam) and inference
//! forwards on random inputs of a fixed shape, in samples per second. Runs on the current
//! rayon pool (set its size with `--threads` / `RAYON_NUM_THREADS`).
//!
//! Layer: cpu, the reference (below train, engine and cli). May use `model` and the shared
//! modules (`rng`, `isa`, `cache`, `atomic_file`).

use super::{cross_entropy, Adam, CpuModel, Input, Mode};
use crate::model::ModelConfig;
use crate::rng::{Purpose, Stream};
use std::time::Instant;

/// Batch `b` of `t` frames (all clips full length), 128 mels, kernel `kernel`, 5 classes.
/// One warm-up step, then `steps` timed training steps and `steps` timed inference passes.
/// Returns (training samples/s, inference samples/s).
pub fn bench_train(b: usize, t: usize, steps: usize, kernel: usize) -> (f64, f64) {
    let cfg = ModelConfig {
        kernel,
        ..ModelConfig::default()
    };
    let m = cfg.n_mels;
    let rng = Stream::new(1, Purpose::Test, 0);
    let x: Vec<f32> = (0..b * m * t).map(|i| rng.normal(i as u64)).collect();
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
    let mut step = |model: &mut CpuModel<f32>, s: u32| {
        model.zero_grads();
        let f = model.forward(&inp, Mode::Train { seed: 1, step: s });
        let (_, dl, _) = cross_entropy(&f.logits, &labels, cfg.classes, None, 0.0);
        model.backward(&f, &dl);
        adam.step(&mut model.params, &model.grads);
    };
    step(&mut model, 0);
    let steps = steps.max(1);
    let t0 = Instant::now();
    for s in 0..steps {
        step(&mut model, s as u32 + 1);
    }
    let train = (b * steps) as f64 / t0.elapsed().as_secs_f64();
    let _ = model.infer(&inp);
    let t0 = Instant::now();
    for _ in 0..steps {
        std::hint::black_box(model.infer(&inp).expect("valid input"));
    }
    let infer = (b * steps) as f64 / t0.elapsed().as_secs_f64();
    (train, infer)
}
