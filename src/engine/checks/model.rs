//! The whole device training step (src/engine/step.rs) on the `sim` device with shuffled
//! thread order (or the real GPU with SER_TEST_DEVICE=cuda) against the CPU reference:
//! forward logits in eval and train mode, every parameter gradient, three full training
//! steps through the `Backend` trait (dropout, BatchNorm, clipping, weight decay, Adam), state
//! round trips, padding invariance, and `ser-engine --device sim train` end to end.
//!
//! Tolerances: the forward/gradient oracle is `CpuModel<f64>` on the same f32 parameters and
//! input, so the measured error is the device's f32 rounding alone: forward sums of a few
//! hundred products stay ≤ 1e-5 relative (f32 ε 6e-8 × accumulation depth); gradients go
//! through longer sums and BatchNorm's cancelling terms, ≤ 1e-4. Training steps compare with
//! `CpuBackend` (f32 on both sides, same update order): Adam divides by √v, which maps a
//! relative gradient error to at most the same relative update error, so after 3 steps the
//! parameters agree far inside 1e-4 (the update is lr·O(1) on parameters of size ~0.3).
//!
//! Layer: engine (below train and cli). May use `backend` (it implements it), `device`, `cpu`
//! (the reference it is checked against), `features`, `model` and the shared modules (`rng`,
//! `isa`, `cache`, `atomic_file`); never `train` or `cli`.

use super::util::{check, f64s};
use crate::backend::batch::Batch;
use crate::backend::{Backend, OptimConfig};
use crate::cpu::backend::CpuBackend;
use crate::cpu::gradcheck::small_config;
use crate::cpu::{cross_entropy, CpuModel, Input, Mode};
use crate::device::Device;
use crate::engine::rnn::LossConfig;
use crate::engine::step::{DeviceBackend, DeviceModel};
use crate::model::{BufferLayout, ModelConfig, ParamLayout};
use crate::rng::{Purpose, Stream};

fn device() -> Device {
    super::device(23)
}

/// Input `[B][n_mels][t_max]`: N(0,1) inside each clip, zero in its padding (MODEL_SPEC).
fn input(seed: u64, n_mels: usize, t_max: usize, lengths: &[usize]) -> Vec<f32> {
    let s = Stream::new(seed, Purpose::Test, 5);
    let mut x = vec![0.0f32; lengths.len() * n_mels * t_max];
    for (b, &l) in lengths.iter().enumerate() {
        for m in 0..n_mels {
            for t in 0..l {
                let i = (b * n_mels + m) * t_max + t;
                x[i] = s.normal(i as u64);
            }
        }
    }
    x
}

fn norm(v: &[f64]) -> f64 {
    v.iter().map(|x| x * x).sum::<f64>().sqrt()
}

const LENS: [usize; 3] = [32, 27, 18];
const T_MAX: usize = 32;

pub fn whole_forward_matches_cpu_in_eval_and_train() {
    let cfg = small_config(true);
    let x = input(1, cfg.n_mels, T_MAX, &LENS);
    let mut dm = DeviceModel::new(device(), &cfg, 7).unwrap();
    let mut cpu = CpuModel::<f64>::new(cfg.clone(), 7);
    let xd = f64s(&x);
    let inp = Input {
        x: &xd,
        batch: 3,
        t_max: T_MAX,
        lengths: &LENS,
    };
    // Train first so the running statistics the eval pass uses are not the initial 0/1.
    let mode = Mode::Train { seed: 5, step: 3 };
    let got = dm.forward(&x, &LENS, T_MAX, mode).unwrap();
    let want = cpu.forward(&inp, mode).logits;
    check("train-mode logits (dropout on)", &got, &want, 1e-5);
    check(
        "running statistics after a training forward",
        &dm.buffers_host().unwrap(),
        &cpu.buffers,
        1e-5,
    );
    let got = dm.forward(&x, &LENS, T_MAX, Mode::Eval).unwrap();
    let want = cpu.forward(&inp, Mode::Eval).logits;
    check("eval logits", &got, &want, 1e-5);
    // The same input handed over already on the device gives the same logits.
    let xb = dm.dev.htod(&x).unwrap();
    let again = dm.forward_device(xb, &LENS, T_MAX, Mode::Eval).unwrap();
    assert_eq!(again, got);
    // A second step of the same shape reuses its workspace.
    assert_eq!(dm.cached_shapes(), 1);
}

pub fn every_parameter_gradient_matches_cpu() {
    for (bn, loss) in [
        (true, LossConfig::default()),
        (
            false,
            LossConfig {
                class_weights: Some(vec![0.5, 1.0, 2.0]),
                label_smoothing: 0.1,
                soft: None,
            },
        ),
    ] {
        let cfg = small_config(bn);
        let x = input(2, cfg.n_mels, T_MAX, &LENS);
        let labels = [2usize, 0, 1];
        let mut dm = DeviceModel::new(device(), &cfg, 9).unwrap();
        let out = dm
            .compute_grads(&x, &LENS, T_MAX, &labels, 4, 1, &loss)
            .unwrap();
        let mut cpu = CpuModel::<f64>::new(cfg.clone(), 9);
        let xd = f64s(&x);
        let inp = Input {
            x: &xd,
            batch: 3,
            t_max: T_MAX,
            lengths: &LENS,
        };
        let fwd = cpu.forward(&inp, Mode::Train { seed: 4, step: 1 });
        let (l, dlogits, correct) = cross_entropy(
            &fwd.logits,
            &labels,
            cfg.classes,
            loss.class_weights.as_deref(),
            loss.label_smoothing as f64,
        );
        cpu.backward(&fwd, &dlogits);
        eprintln!("batchnorm {bn}: loss {} vs {l}", out.loss);
        assert!(
            ((out.loss as f64 - l) / l).abs() <= 1e-5,
            "loss {} vs {l}",
            out.loss
        );
        assert_eq!(out.correct, correct);
        let g = dm.grads_host().unwrap();
        let layout = ParamLayout::new(&cfg);
        let gmax = layout
            .entries
            .iter()
            .map(|e| norm(&cpu.grads[e.offset..e.offset + e.len]))
            .fold(0.0, f64::max);
        for e in &layout.entries {
            let r = e.offset..e.offset + e.len;
            let (got, want) = (&g[r.clone()], &cpu.grads[r]);
            let conv_bias_before_bn = bn && e.name.starts_with("conv") && e.name.ends_with(".bias");
            if conv_bias_before_bn || e.name == "attention.bias" {
                // Gradients that cancel by construction, so a relative error measures rounding
                // noise against ~0: BatchNorm subtracts the per-channel mean over exactly the
                // positions a conv bias was added to (true gradient 0), and attention.bias's
                // gradient is Σ_t g_t(1−e_t²) with Σ_t g_t = 0 (softmax is shift-invariant),
                // ~100x smaller than its terms (measured relative error ~7e-5). Bound the
                // difference by the largest tensor gradient's norm instead.
                let d: Vec<f64> = got.iter().zip(want).map(|(a, b)| *a as f64 - b).collect();
                let err = norm(&d) / gmax;
                eprintln!("{}: |diff| / max ‖g‖ = {err:.3e} (tol 1e-5)", e.name);
                assert!(err <= 1e-5, "{}: {err}", e.name);
            } else {
                check(&format!("bn {bn} grad {}", e.name), got, want, 1e-4);
            }
        }
    }
}

fn batch(cfg: &ModelConfig, seed: u64, lengths: &[usize], labels: &[usize]) -> Batch {
    let t_max = *lengths.iter().max().unwrap();
    Batch {
        x: input(seed, cfg.n_mels, t_max, lengths),
        batch: lengths.len(),
        n_mels: cfg.n_mels,
        t_max,
        lengths: lengths.to_vec(),
        labels: labels.to_vec(),
        indices: (0..lengths.len()).collect(),
        mix: None,
    }
}

pub fn three_training_steps_match_cpu_backend() {
    for bn in [true, false] {
        let cfg = small_config(bn);
        let optim = OptimConfig {
            lr: 1e-2,
            // L2 decay also makes BN-preceded conv biases' gradients (true value 0, see the
            // gradient test) dominated by a deterministic term instead of rounding noise that
            // Adam's normalisation would blow up to ±lr.
            weight_decay: 1e-3,
            decoupled_weight_decay: false,
            clip_grad_norm: 0.5,
            label_smoothing: 0.05,
            class_weights: None,
            freeze_cnn: false,
            backbone_lr_scale: 1.0,
        };
        let mut dev = DeviceBackend::new(device(), &cfg, &optim, 11).unwrap();
        let mut cpu = CpuBackend::new(&cfg, &optim, 11);
        let batches = [
            batch(&cfg, 20, &LENS, &[0, 1, 2]),
            batch(&cfg, 21, &[24, 40, 16], &[2, 2, 1]),
            batch(&cfg, 22, &LENS, &[1, 0, 0]),
        ];
        for (step, b) in batches.iter().enumerate() {
            let lr = 1e-2 / (step + 1) as f64;
            let sd = dev.train_step(b, step as u32, lr).unwrap();
            let sc = cpu.train_step(b, step as u32, lr).unwrap();
            eprintln!("bn {bn} step {step}: loss {} vs {}", sd.loss, sc.loss);
            assert!(
                ((sd.loss - sc.loss) / sc.loss).abs() <= 1e-5,
                "{} vs {}",
                sd.loss,
                sc.loss
            );
            assert_eq!(sd.correct, sc.correct);
        }
        assert_eq!(dev.model.cached_shapes(), 2, "two batch shapes seen");
        let (sd, sc) = (dev.state().unwrap(), cpu.state().unwrap());
        let layout = ParamLayout::new(&cfg);
        for e in &layout.entries {
            let r = e.offset..e.offset + e.len;
            check(
                &format!("bn {bn} after 3 steps: {}", e.name),
                &sd.params[r.clone()],
                &f64s(&sc.params[r]),
                1e-4,
            );
        }
        check("adam m", &sd.adam_m, &f64s(&sc.adam_m), 1e-4);
        check("adam v", &sd.adam_v, &f64s(&sc.adam_v), 1e-4);
        assert_eq!(sd.adam_t, 3);
        assert_eq!(sd.buffers.len(), BufferLayout::new(&cfg).total());
        if bn {
            check("BN buffers", &sd.buffers, &f64s(&sc.buffers), 1e-5);
        }
        // set_state round trip: a fresh backend given this state predicts identically.
        let mut other = DeviceBackend::new(device(), &cfg, &optim, 99).unwrap();
        other.set_state(&sd).unwrap();
        let a = dev.eval_logits(&batches[0]).unwrap();
        let b = other.eval_logits(&batches[0]).unwrap();
        assert_eq!(a, b, "same state, same logits");
        let s2 = other.state().unwrap();
        assert_eq!(
            (s2.params, s2.buffers, s2.adam_m, s2.adam_v, s2.adam_t),
            (sd.params, sd.buffers, sd.adam_m, sd.adam_v, sd.adam_t)
        );
        // A state of the wrong size is an error.
        let mut bad = dev.state().unwrap();
        bad.params.pop();
        assert!(other.set_state(&bad).is_err());
    }
}

pub fn logits_do_not_depend_on_batch_padding() {
    let cfg = small_config(true);
    let mut dm = DeviceModel::new(device(), &cfg, 3).unwrap();
    // Give the running statistics non-trivial values first.
    let warm = input(30, cfg.n_mels, T_MAX, &LENS);
    dm.forward(&warm, &LENS, T_MAX, Mode::Train { seed: 1, step: 0 })
        .unwrap();
    let short = input(31, cfg.n_mels, 18, &[18]);
    let alone = dm.forward(&short, &[18], 18, Mode::Eval).unwrap();
    // The same clip next to one three times longer, padded to 54 frames.
    let long = input(32, cfg.n_mels, 54, &[54]);
    let mut x = vec![0.0f32; 2 * cfg.n_mels * 54];
    for m in 0..cfg.n_mels {
        x[m * 54..m * 54 + 18].copy_from_slice(&short[m * 18..(m + 1) * 18]);
        let o = (cfg.n_mels + m) * 54;
        x[o..o + 54].copy_from_slice(&long[m * 54..(m + 1) * 54]);
    }
    let both = dm.forward(&x, &[18, 54], 54, Mode::Eval).unwrap();
    check(
        "short clip alone vs batched with a 3x longer one",
        &both[..cfg.classes],
        &f64s(&alone),
        1e-5,
    );
}

pub fn bad_inputs_are_errors() {
    let cfg = small_config(true);
    let mut dm = DeviceModel::new(device(), &cfg, 3).unwrap();
    let x = input(1, cfg.n_mels, T_MAX, &LENS);
    assert!(dm.forward(&x, &[32, 27, 7], T_MAX, Mode::Eval).is_err());
    assert!(dm.forward(&x[1..], &LENS, T_MAX, Mode::Eval).is_err());
    let loss = LossConfig::default();
    assert!(dm
        .compute_grads(&x, &LENS, T_MAX, &[0, 1, 3], 1, 0, &loss)
        .is_err());
    assert!(dm
        .compute_grads(&x, &LENS, T_MAX, &[0, 1], 1, 0, &loss)
        .is_err());
    // Still usable afterwards.
    assert!(dm.forward(&x, &LENS, T_MAX, Mode::Eval).is_ok());
}

/// Launches, transfers and allocations of one training step of the default model (32/64/128
/// channels, FC 128, BiLSTM 2×64) on sim, B = 2, with 16 mels instead of 128 to keep sim time
/// down (the launch sequence does not depend on mels, batch or frames — the LSTM time loop
/// runs inside its kernels — as the two frame counts here show): printed for docs/design.md, and
/// checked for the
/// properties the design promises: a repeated step of a seen shape performs the same work,
/// allocates nothing on the device, reads back only a few scalars, sends only the input,
/// lengths and labels, and copies no tensor between buffers (views instead).
pub fn default_model_step_counts() {
    use crate::device::{thread_kernel_launches, thread_stats};
    /// Launches of one training step of this model, measured (B, T and mels do not change it):
    /// 87 before the per-channel reductions became two-pass 2-D grids (+10: BN statistics
    /// and backward sums in 3 stages, the conv bias row sums of 3 stages, the FC bias).
    const MAX_STEP_LAUNCHES: u64 = 97;
    let copy_launches = || thread_kernel_launches("loss_copy_slice").unwrap();
    let cfg = ModelConfig {
        classes: 5,
        n_mels: 16,
        ..ModelConfig::default()
    };
    let mut dm = DeviceModel::new(device(), &cfg, 1).unwrap();
    let loss = LossConfig::default();
    let mut launches = Vec::new();
    for (t_max, lens) in [(32usize, [32usize, 20]), (64, [64, 50])] {
        let x = input(3, cfg.n_mels, t_max, &lens);
        let mut per_step = Vec::new();
        for step in 0..2 {
            let copies0 = copy_launches();
            let a = thread_stats();
            dm.train_step(&x, &lens, t_max, &[1, 3], 5, step, 1e-4, 1.0, &loss)
                .unwrap();
            let b = thread_stats();
            // The CNN and the classifier read their weights from, and write their gradients
            // into, views of the flat buffers: no copy launch in a training step (and the
            // add-into-slice kernel is gone).
            assert_eq!(
                copy_launches() - copies0,
                0,
                "copy launches in a training step"
            );
            per_step.push(crate::device::DeviceStats {
                launches: b.launches - a.launches,
                htod_bytes: b.htod_bytes - a.htod_bytes,
                dtoh_bytes: b.dtoh_bytes - a.dtoh_bytes,
                allocs: b.allocs - a.allocs,
                memsets: b.memsets - a.memsets,
            });
        }
        eprintln!(
            "default model, B=2, t_max {t_max} (T3 {}): first step {:?}, repeated step {:?}",
            t_max / 8,
            per_step[0],
            per_step[1]
        );
        let s = per_step[1];
        assert_eq!(
            s.launches, per_step[0].launches,
            "same shape, same launches"
        );
        launches.push(s.launches);
        // 119 before views removed the per-tensor copies; more means copies came back.
        assert!(s.launches <= MAX_STEP_LAUNCHES, "{s:?}");
        // A seen shape reuses its whole workspace (CNN, sequence half, im2col and clipping
        // scratch): no device allocation at all.
        assert_eq!(
            s.allocs, 0,
            "repeated step of a seen shape allocates: {per_step:?}"
        );
        // Input + per-call length/label uploads: the input dominates.
        let input_bytes = (x.len() * 4) as u64;
        assert!(
            s.htod_bytes >= input_bytes && s.htod_bytes <= input_bytes + 4096,
            "{s:?}"
        );
        // Loss/correct and the clip norm, plus BN running statistics copies in eval only.
        assert!(s.dtoh_bytes <= 64, "{s:?}");
    }
    assert_eq!(
        launches[0], launches[1],
        "launches do not depend on the frame count"
    );
    // Breakdown for docs/design.md: training forward (with loss) and forward + backward.
    let (t_max, lens) = (32usize, [32usize, 20]);
    let x = input(3, cfg.n_mels, t_max, &lens);
    let a = thread_stats();
    dm.forward(&x, &lens, t_max, Mode::Train { seed: 5, step: 9 })
        .unwrap();
    let b = thread_stats();
    dm.compute_grads(&x, &lens, t_max, &[1, 3], 5, 9, &loss)
        .unwrap();
    let c = thread_stats();
    let copies_c = copy_launches();
    dm.forward(&x, &lens, t_max, Mode::Eval).unwrap();
    let d = thread_stats();
    // BN reads the running statistics in place in eval: no snapshot copies either
    assert_eq!(
        copy_launches() - copies_c,
        0,
        "copy launches in an eval forward"
    );
    // Every call above is of a seen shape: none allocates on the device.
    assert_eq!(b.allocs - a.allocs, 0, "training forward allocates");
    assert_eq!(c.allocs - b.allocs, 0, "compute_grads allocates");
    assert_eq!(d.allocs - c.allocs, 0, "eval forward allocates");
    eprintln!(
        "launches: training forward + loss {}, forward + backward {}, eval forward {}, \
         clip + Adam {}",
        b.launches - a.launches,
        c.launches - b.launches,
        d.launches - c.launches,
        launches[0] - (c.launches - b.launches)
    );
}

/// Workspaces are reused without clearing: a shape's buffers hold the previous call's values
/// (here a batch with longer clips, so more valid positions, and other input values) when the
/// next call runs. The gradients and training-mode logits must not depend on that history:
/// compared BIT FOR BIT with a fresh model that only sees the second batch (gradients and a
/// training forward do not read the BN running statistics, so those may differ). Several
/// im2col chunks per stage (`max_col_elems` small) exercise the shared column scratch with a
/// partial last chunk.
pub fn reused_workspace_gives_bit_identical_results() {
    for batchnorm in [true, false] {
        let cfg = small_config(batchnorm);
        let loss = LossConfig::default();
        let t_max = 40;
        let (lens_a, lens_b) = ([40usize, 40, 40], [33usize, 9, 21]);
        let (xa, xb) = (
            input(11, cfg.n_mels, t_max, &lens_a),
            input(12, cfg.n_mels, t_max, &lens_b),
        );
        let new_model = || {
            let mut m = DeviceModel::new(device(), &cfg, 4).unwrap();
            // stage 1 has 9·16·40 = 5760 column values per clip: 2 clips per chunk
            m.opts.max_col_elems = 12_000;
            m
        };
        let mut reused = new_model();
        reused
            .compute_grads(&xa, &lens_a, t_max, &[0, 1, 2], 8, 1, &loss)
            .unwrap();
        reused
            .forward(&xa, &lens_a, t_max, Mode::Train { seed: 8, step: 2 })
            .unwrap();
        let mut fresh = new_model();
        for m in [&mut reused, &mut fresh] {
            m.compute_grads(&xb, &lens_b, t_max, &[2, 0, 1], 8, 3, &loss)
                .unwrap();
        }
        let (g_reused, g_fresh) = (reused.grads_host().unwrap(), fresh.grads_host().unwrap());
        assert!(g_fresh.iter().all(|v| v.is_finite()));
        assert!(
            g_reused
                .iter()
                .zip(&g_fresh)
                .all(|(a, b)| a.to_bits() == b.to_bits()),
            "bn={batchnorm}: gradients depend on the workspace's history"
        );
        let mode = Mode::Train { seed: 8, step: 4 };
        let l_reused = reused.forward(&xb, &lens_b, t_max, mode).unwrap();
        let l_fresh = fresh.forward(&xb, &lens_b, t_max, mode).unwrap();
        assert!(
            l_reused
                .iter()
                .zip(&l_fresh)
                .all(|(a, b)| a.to_bits() == b.to_bits()),
            "bn={batchnorm}: logits depend on the workspace's history: {l_reused:?} vs {l_fresh:?}"
        );
        assert_eq!(reused.cached_shapes(), 1);
    }
}

/// The workspace cache is bounded in bytes: `workspace_bytes` (used to decide before allocating)
/// equals what a workspace holds, and a limit below two workspaces keeps one shape only.
pub fn workspace_cache_is_bounded_in_bytes() {
    use crate::backend::memory::workspace_bytes;
    use crate::engine::cnn::CnnWorkspace;
    let loss = LossConfig::default();
    for batchnorm in [true, false] {
        let cfg = small_config(batchnorm);
        let dev = device();
        for (b, t) in [(1usize, 8usize), (3, 40), (2, 37)] {
            let ws = CnnWorkspace::new(&dev, &cfg, b, t).unwrap();
            assert_eq!(ws.bytes(), workspace_bytes(&cfg, b, t), "b {b} t {t}");
        }
        let shapes = [(24usize, [24usize, 20]), (32, [32, 9])];
        let two: usize = shapes
            .iter()
            .map(|(t, l)| workspace_bytes(&cfg, l.len(), *t))
            .sum();
        for (limit, want) in [(two, 2), (two - 1, 1)] {
            let mut m = DeviceModel::new(device(), &cfg, 4).unwrap();
            m.max_cache_bytes = limit;
            for (t, l) in shapes {
                let x = input(5, cfg.n_mels, t, &l);
                m.compute_grads(&x, &l, t, &[0, 1], 1, 0, &loss).unwrap();
            }
            assert_eq!(m.cached_shapes(), want, "limit {limit}");
        }
    }
}

/// `--norm utterance` on the device (kernels/norm.cu as the model's first step) against the
/// CPU model in f64: train and eval logits and every parameter gradient, on an input whose
/// bands sit at different levels and spreads (as log-Mel bands do), so the normalisation
/// changes the logits visibly (checked: the model without it gives other logits).
/// Tolerances as in the checks above (1e-5 forward, 1e-4 gradients; the conv biases before
/// BatchNorm, whose true gradient is 0, against the largest gradient's norm).
pub fn utterance_norm_model_matches_cpu() {
    let mut cfg = small_config(true);
    cfg.input_norm = crate::model::InputNorm::Utterance;
    let mut x = input(3, cfg.n_mels, T_MAX, &LENS);
    for (i, v) in x.iter_mut().enumerate() {
        let m = (i / T_MAX) % cfg.n_mels;
        if i % T_MAX < LENS[i / (T_MAX * cfg.n_mels)] {
            *v = 0.2 * (1 + m % 3) as f32 * *v - 0.9 + 0.1 * m as f32;
        }
    }
    let xd = f64s(&x);
    let inp = Input {
        x: &xd,
        batch: 3,
        t_max: T_MAX,
        lengths: &LENS,
    };
    let mut dm = DeviceModel::new(device(), &cfg, 7).unwrap();
    let mut cpu = CpuModel::<f64>::new(cfg.clone(), 7);
    let mode = Mode::Train { seed: 5, step: 3 };
    let got = dm.forward(&x, &LENS, T_MAX, mode).unwrap();
    check(
        "norm: train-mode logits",
        &got,
        &cpu.forward(&inp, mode).logits,
        1e-5,
    );
    let got = dm.forward(&x, &LENS, T_MAX, Mode::Eval).unwrap();
    check(
        "norm: eval logits",
        &got,
        &cpu.forward(&inp, Mode::Eval).logits,
        1e-5,
    );
    let plain_cfg = ModelConfig {
        input_norm: crate::model::InputNorm::None,
        ..cfg.clone()
    };
    let mut plain =
        CpuModel::<f64>::from_params(plain_cfg, cpu.params.clone(), cpu.buffers.clone()).unwrap();
    let without = plain.forward(&inp, Mode::Eval).logits;
    let moved = got
        .iter()
        .zip(&without)
        .map(|(a, b)| (*a as f64 - b).abs())
        .fold(0.0, f64::max);
    assert!(
        moved > 1e-3,
        "the normalisation did not change the logits ({moved:e})"
    );

    let labels = [2usize, 0, 1];
    let loss = LossConfig::default();
    let mut dm = DeviceModel::new(device(), &cfg, 9).unwrap();
    dm.compute_grads(&x, &LENS, T_MAX, &labels, 4, 1, &loss)
        .unwrap();
    let mut cpu = CpuModel::<f64>::new(cfg.clone(), 9);
    let fwd = cpu.forward(&inp, Mode::Train { seed: 4, step: 1 });
    let (_, dlogits, _) = cross_entropy(&fwd.logits, &labels, cfg.classes, None, 0.0);
    cpu.backward(&fwd, &dlogits);
    let g = dm.grads_host().unwrap();
    let layout = ParamLayout::new(&cfg);
    let gmax = layout
        .entries
        .iter()
        .map(|e| norm(&cpu.grads[e.offset..e.offset + e.len]))
        .fold(0.0, f64::max);
    for e in &layout.entries {
        let r = e.offset..e.offset + e.len;
        let (got, want) = (&g[r.clone()], &cpu.grads[r]);
        if (e.name.starts_with("conv") && e.name.ends_with(".bias")) || e.name == "attention.bias" {
            let d: Vec<f64> = got.iter().zip(want).map(|(a, b)| *a as f64 - b).collect();
            let err = norm(&d) / gmax;
            assert!(err <= 1e-5, "norm: {}: {err}", e.name);
        } else {
            check(&format!("norm: grad {}", e.name), got, want, 1e-4);
        }
    }
}

/// `--ema` through the `Backend` trait: three training steps on the device and on the CPU
/// keep the same average (after enable_ema, which starts it from the current weights), the
/// average follows ema_decay's warm-up (checked against an average recomputed from the
/// CPU's parameters after each step), `swap_ema` exchanges weights and average both ways,
/// and the average survives state()/set_state() (the resume state). Tolerance 1e-4 relative
/// as in three_training_steps_match_cpu_backend (the averages mix parameters that agree to it).
pub fn ema_matches_cpu_backend_and_round_trips() {
    let cfg = small_config(true);
    let optim = OptimConfig {
        lr: 1e-2,
        weight_decay: 1e-3,
        decoupled_weight_decay: false,
        clip_grad_norm: 0.0,
        label_smoothing: 0.0,
        class_weights: None,
        freeze_cnn: false,
        backbone_lr_scale: 1.0,
    };
    let mut dev = DeviceBackend::new(device(), &cfg, &optim, 11).unwrap();
    let mut cpu = CpuBackend::new(&cfg, &optim, 11);
    assert!(dev.swap_ema().is_err() && cpu.swap_ema().is_err());
    dev.enable_ema(0.95).unwrap();
    cpu.enable_ema(0.95).unwrap();
    let mut mirror = cpu.model.params.clone();
    let batches = [
        batch(&cfg, 30, &LENS, &[0, 1, 2]),
        batch(&cfg, 31, &[24, 40, 16], &[2, 2, 1]),
        batch(&cfg, 32, &LENS, &[1, 0, 0]),
    ];
    for (step, b) in batches.iter().enumerate() {
        dev.train_step(b, step as u32, 1e-2).unwrap();
        cpu.train_step(b, step as u32, 1e-2).unwrap();
        // decays 0.1, 0.18.., 0.25 (warm-up), not 0.95
        let d = crate::backend::ema_decay(0.95, step as u32);
        assert!(d < 0.3, "{d}");
        crate::backend::ema_update(&mut mirror, &cpu.model.params, d);
    }
    let (sd, sc) = (dev.state().unwrap(), cpu.state().unwrap());
    assert_eq!(sc.ema, mirror);
    check("EMA after 3 steps", &sd.ema, &f64s(&sc.ema), 1e-4);
    assert_ne!(sc.ema, sc.params);
    // swap: the weights become the average and back
    dev.swap_ema().unwrap();
    let swapped = dev.state().unwrap();
    assert_eq!((&swapped.params, &swapped.ema), (&sd.ema, &sd.params));
    dev.swap_ema().unwrap();
    assert_eq!(dev.state().unwrap().params, sd.params);
    // the resume state carries the average into a fresh backend
    let mut dev2 = DeviceBackend::new(device(), &cfg, &optim, 11).unwrap();
    dev2.set_state(&sd).unwrap();
    dev2.enable_ema(0.95).unwrap(); // keeps the restored average
    assert_eq!(dev2.state().unwrap().ema, sd.ema);
}

/// `--freeze cnn` with `--backbone-lr-scale 0.25` and clipping on: three steps on the device
/// and on `CpuBackend` agree (1e-4 relative, as three_training_steps_match_cpu_backend); on
/// both, the conv stages' parameters, their Adam moments and the BatchNorm running statistics
/// stay bit-identical to the start, while the backbone and the head move. A backend given a
/// trained state (as `--init` gives it) keeps the frozen values it was given.
pub fn freeze_and_backbone_lr_scale_match_cpu_backend() {
    let cfg = small_config(true);
    let optim = OptimConfig {
        lr: 1e-2,
        weight_decay: 1e-3,
        decoupled_weight_decay: false,
        clip_grad_norm: 0.5,
        label_smoothing: 0.0,
        class_weights: None,
        freeze_cnn: true,
        backbone_lr_scale: 0.25,
    };
    let groups = optim.lr_groups(&cfg);
    let (cnn, head) = (groups[0].range.clone(), groups[2].range.clone());
    let mut dev = DeviceBackend::new(device(), &cfg, &optim, 11).unwrap();
    let mut cpu = CpuBackend::new(&cfg, &optim, 11);
    // start from moved running statistics, as a pretrained run's
    let mut start = cpu.state().unwrap();
    for (i, b) in start.buffers.iter_mut().enumerate() {
        *b += 0.125 * (i % 5) as f32;
    }
    dev.set_state(&start).unwrap();
    cpu.set_state(&start).unwrap();
    let batches = [
        batch(&cfg, 40, &LENS, &[0, 1, 2]),
        batch(&cfg, 41, &[24, 40, 16], &[2, 2, 1]),
        batch(&cfg, 42, &LENS, &[1, 0, 0]),
    ];
    for (step, b) in batches.iter().enumerate() {
        let sd = dev.train_step(b, step as u32, 1e-2).unwrap();
        let sc = cpu.train_step(b, step as u32, 1e-2).unwrap();
        assert!(
            ((sd.loss - sc.loss) / sc.loss).abs() <= 1e-5,
            "{} vs {}",
            sd.loss,
            sc.loss
        );
    }
    let (sd, sc) = (dev.state().unwrap(), cpu.state().unwrap());
    for (who, s) in [("device", &sd), ("cpu", &sc)] {
        assert_eq!(
            s.params[cnn.clone()],
            start.params[cnn.clone()],
            "{who}: CNN moved"
        );
        assert!(
            s.adam_m[cnn.clone()].iter().all(|&m| m == 0.0),
            "{who}: CNN m"
        );
        assert!(
            s.adam_v[cnn.clone()].iter().all(|&v| v == 0.0),
            "{who}: CNN v"
        );
        assert_eq!(
            s.buffers, start.buffers,
            "{who}: BatchNorm running statistics moved"
        );
        assert_ne!(
            s.params[head.clone()],
            start.params[head.clone()],
            "{who}: head"
        );
        assert_eq!(s.adam_t, 3);
    }
    let layout = ParamLayout::new(&cfg);
    for e in &layout.entries {
        let r = e.offset..e.offset + e.len;
        check(
            &format!("freeze after 3 steps: {}", e.name),
            &sd.params[r.clone()],
            &f64s(&sc.params[r]),
            1e-4,
        );
    }
    check("adam m", &sd.adam_m, &f64s(&sc.adam_m), 1e-4);
    check("adam v", &sd.adam_v, &f64s(&sc.adam_v), 1e-4);
    // the scale acts: one step at 0.25 moves the backbone less than a step at 1 would
    let middle = groups[1].range.clone();
    let moved = |s: &crate::backend::TrainState| -> f64 {
        s.params[middle.clone()]
            .iter()
            .zip(&start.params[middle.clone()])
            .map(|(a, b)| ((a - b) as f64).abs())
            .sum()
    };
    let mut full = CpuBackend::new(
        &cfg,
        &OptimConfig {
            backbone_lr_scale: 1.0,
            ..optim.clone()
        },
        11,
    );
    full.set_state(&start).unwrap();
    let mut quarter = CpuBackend::new(&cfg, &optim, 11);
    quarter.set_state(&start).unwrap();
    full.train_step(&batches[0], 0, 1e-2).unwrap();
    quarter.train_step(&batches[0], 0, 1e-2).unwrap();
    let (mf, mq) = (
        moved(&full.state().unwrap()),
        moved(&quarter.state().unwrap()),
    );
    // Adam's first step is lr·sign(g) per element: exactly a quarter, up to rounding
    assert!((mq / mf - 0.25).abs() < 1e-3, "{mq} vs {mf}");
}

/// Three training steps on mixed batches (`--mixup`: inputs blended, lengths the union, soft
/// targets with class weights and smoothing) through the `Backend` trait, device against
/// `CpuBackend`: losses to 1e-5 and parameters to 1e-4 relative, as the plain steps
/// (`three_training_steps_match_cpu_backend`), and the same correct counts.
pub fn mixup_steps_match_cpu_backend() {
    use crate::backend::mixup::Mix;
    let cfg = small_config(true);
    let optim = OptimConfig {
        lr: 1e-2,
        weight_decay: 1e-3,
        decoupled_weight_decay: false,
        clip_grad_norm: 0.5,
        label_smoothing: 0.1,
        class_weights: Some(vec![0.5, 1.0, 2.0]),
        freeze_cnn: false,
        backbone_lr_scale: 1.0,
    };
    let mut dev = DeviceBackend::new(device(), &cfg, &optim, 11).unwrap();
    let mut cpu = CpuBackend::new(&cfg, &optim, 11);
    let mixed = |mut b: Batch, lambda: f32, partner: Vec<usize>| {
        // as train::mixup does: blend with the partner, union of the lengths
        let row = b.n_mels * b.t_max;
        let x0 = b.x.clone();
        for (i, &j) in partner.iter().enumerate() {
            for k in 0..row {
                b.x[i * row + k] = lambda * x0[i * row + k] + (1.0 - lambda) * x0[j * row + k];
            }
        }
        let l0 = b.lengths.clone();
        for (i, &j) in partner.iter().enumerate() {
            b.lengths[i] = l0[i].max(l0[j]);
        }
        b.mix = Some(Mix { lambda, partner });
        b
    };
    let batches = [
        mixed(batch(&cfg, 40, &LENS, &[0, 1, 2]), 0.3, vec![2, 0, 1]),
        mixed(
            batch(&cfg, 41, &[24, 40, 16], &[2, 2, 1]),
            0.7,
            vec![1, 0, 2],
        ),
        mixed(batch(&cfg, 42, &LENS, &[1, 0, 0]), 0.5, vec![0, 2, 1]),
    ];
    for (step, b) in batches.iter().enumerate() {
        let sd = dev.train_step(b, step as u32, 1e-2).unwrap();
        let sc = cpu.train_step(b, step as u32, 1e-2).unwrap();
        eprintln!("mixup step {step}: loss {} vs {}", sd.loss, sc.loss);
        assert!(
            ((sd.loss - sc.loss) / sc.loss).abs() <= 1e-5,
            "{} vs {}",
            sd.loss,
            sc.loss
        );
        assert_eq!(sd.correct, sc.correct);
    }
    let (sd, sc) = (dev.state().unwrap(), cpu.state().unwrap());
    let layout = ParamLayout::new(&cfg);
    for e in &layout.entries {
        let r = e.offset..e.offset + e.len;
        check(
            &format!("mixup after 3 steps: {}", e.name),
            &sd.params[r.clone()],
            &f64s(&sc.params[r]),
            1e-4,
        );
    }
    // the soft loss is not the hard one: the same batch unmixed trains to other weights
    let mut plain = CpuBackend::new(&cfg, &optim, 11);
    for (step, b) in batches.iter().enumerate() {
        let unmixed = Batch {
            mix: None,
            ..b.clone()
        };
        plain.train_step(&unmixed, step as u32, 1e-2).unwrap();
    }
    assert_ne!(plain.state().unwrap().params, sc.params);
}
