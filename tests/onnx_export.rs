//! ONNX export parity: the exported graph, run by PyPI's onnxruntime (fixtures written by
//! tools/onnx_fixtures.py), gives this project's logits to 1e-4 on clips of several lengths.
//!
//! The model is a small one (16 mels, kernel 5, channels 4/8/8, FC 16, hidden 8, 2 BiLSTM
//! layers, 4 classes) with deterministic weights and non-trivial BatchNorm statistics, so the
//! fixtures stay small (~60 KB). The test also re-exports the model and requires the bytes to
//! equal the committed model.onnx: a change to the exporter makes the fixtures stale, and the
//! test says how to regenerate them (see tools/onnx_fixtures.py).
//!
//! The same model with `--norm utterance` has its own fixtures (tests/fixtures/onnx_norm/), and
//! so has an ensemble of it with a second model whose classes are in another order
//! (tests/fixtures/onnx_ensemble/: its probabilities against the mean of ours).
//!
//! Tolerance 1e-4 absolute on logits of magnitude ~1: both sides compute in f32 with different
//! summation orders (convolutions, GEMMs, LSTM gates); measured differences are ~1e-6.

use ser_engine::backend::batch::db_to_input;
use ser_engine::cpu::{CpuModel, Input};
use ser_engine::features::npy::read_npy;
use ser_engine::model::onnx::export_onnx;
use ser_engine::model::{init_params, BufferLayout, InputNorm, ModelConfig, ParamLayout};
use std::path::{Path, PathBuf};

const LENGTHS: [usize; 4] = [8, 37, 100, 251];

/// The fixtures of the plain model (`onnx`) or of the one with `--norm utterance`
/// (`onnx_norm`).
fn dir(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
}

fn small_model() -> (ModelConfig, Vec<f32>, Vec<f32>) {
    small_model_seeded(11)
}

fn small_model_seeded(seed: u64) -> (ModelConfig, Vec<f32>, Vec<f32>) {
    let cfg = ModelConfig {
        n_mels: 16,
        kernel: 5,
        channels: [4, 8, 8],
        fc: 16,
        hidden: 8,
        lstm_layers: 2,
        classes: 4,
        dropout: 0.3,
        batchnorm: true,
        input_norm: Default::default(),
    };
    // PyTorch's init scaled up (×3) so the logits depend clearly on the input (at init
    // scale the small model's output is almost constant, which would test little).
    let mut params: Vec<f32> = init_params(&cfg, seed).iter().map(|v| 3.0 * v).collect();
    // BatchNorm affine and running statistics away from the identity (init gives 1/0/0/1).
    let pl = ParamLayout::new(&cfg);
    for s in 1..=3 {
        for (i, v) in params[pl.range(&format!("bn{s}.weight"))]
            .iter_mut()
            .enumerate()
        {
            *v = 0.6 + 0.1 * ((i * 7 + s) % 9) as f32;
        }
        for (i, v) in params[pl.range(&format!("bn{s}.bias"))]
            .iter_mut()
            .enumerate()
        {
            *v = 0.05 * ((i * 5 + s) % 7) as f32 - 0.15;
        }
    }
    let bl = BufferLayout::new(&cfg);
    let mut buffers = vec![0.0f32; bl.total()];
    for e in &bl.entries {
        for (i, v) in buffers[e.offset..e.offset + e.len].iter_mut().enumerate() {
            *v = if e.name.ends_with("running_mean") {
                0.1 * ((i * 3) % 5) as f32 - 0.2
            } else if e.name.ends_with("running_var") {
                0.5 + 0.25 * ((i * 2) % 7) as f32
            } else {
                100.0 // num_batches_tracked
            };
        }
    }
    (cfg, params, buffers)
}

fn metadata() -> Vec<(String, String)> {
    vec![
        (
            "labels".into(),
            r#"["anger","happiness","neutral","sadness"]"#.into(),
        ),
        ("sample_rate".into(), "16000".into()),
    ]
}

#[test]
fn onnxruntime_logits_equal_ours_and_the_fixture_is_current() {
    check_fixtures("onnx", InputNorm::None);
}

/// The graph's per-utterance normalisation (ReduceMean over frames, population variance, the
/// same ε) gives the CPU model's logits, whose normalisation is tested on its own
/// (cpu::norm) and against the device kernel (sim_kernels).
#[test]
fn onnxruntime_logits_equal_ours_with_utterance_norm() {
    check_fixtures("onnx_norm", InputNorm::Utterance);
}

fn check_fixtures(name: &str, input_norm: InputNorm) {
    let (mut cfg, params, buffers) = small_model();
    cfg.input_norm = input_norm;
    let dir = || dir(name);
    let bytes = export_onnx(&cfg, &params, &buffers, 40.0, 40.0, &metadata()).unwrap();
    let model_path = dir().join("model.onnx");
    if std::env::var_os("SER_WRITE_ONNX_FIXTURES").is_some() {
        std::fs::create_dir_all(dir()).unwrap();
        std::fs::write(&model_path, &bytes).unwrap();
        eprintln!(
            "wrote {}; now run tools/onnx_fixtures.py",
            model_path.display()
        );
        return;
    }
    let committed = std::fs::read(&model_path).expect("tests/fixtures/onnx/model.onnx");
    assert!(
        committed == bytes,
        "the exporter's output changed: regenerate the fixtures (SER_WRITE_ONNX_FIXTURES=1 \
         cargo test --release --test onnx_export; python tools/onnx_fixtures.py \
         tests/fixtures/{name})"
    );
    let mut model = CpuModel::<f32>::from_params(cfg.clone(), params, buffers).unwrap();
    for t in LENGTHS {
        let x = read_npy(&dir().join(format!("input_{t}.npy"))).unwrap();
        let want = read_npy(&dir().join(format!("logits_{t}.npy"))).unwrap();
        assert_eq!(x.shape, vec![2, 1, cfg.n_mels, t]);
        assert_eq!(want.shape, vec![2, cfg.classes]);
        let scaled: Vec<f32> = x.data.iter().map(|&v| db_to_input(v)).collect();
        let got = model
            .infer(&Input {
                x: &scaled,
                batch: 2,
                t_max: t,
                lengths: &[t, t],
            })
            .unwrap();
        let mut worst = 0.0f32;
        for (g, w) in got.iter().zip(&want.data) {
            assert!(g.is_finite() && w.is_finite(), "T={t}: {g} vs {w}");
            worst = worst.max((g - w).abs());
        }
        assert!(
            worst <= 1e-4,
            "T={t}: max |ours - onnxruntime| = {worst:e}\n{got:?}\n{:?}",
            want.data
        );
        // The two clips differ, so a graph that ignored its input would not pass.
        let spread = (0..cfg.classes)
            .map(|c| (want.data[c] - want.data[cfg.classes + c]).abs())
            .fold(0.0f32, f32::max);
        assert!(spread > 1e-3, "T={t}: the two clips' logits are identical");
        eprintln!("T={t}: max |ours - onnxruntime| = {worst:e}");
    }
}

/// Member 1 of the ensemble fixture: another init (seed 12) whose outputs are the classes in
/// another order; `ENSEMBLE_PERM[c]` is its output index of the ensemble's class c.
const ENSEMBLE_PERM: [usize; 4] = [2, 0, 3, 1];

/// An ensemble exported as one graph: onnxruntime's probabilities equal the mean of the two
/// models' softmax outputs computed here (member 1's permuted by hand), to 1e-4. Softmax moves
/// a probability by at most half the largest logit change (its Jacobian's rows sum in absolute
/// value to 2p(1−p) ≤ 1/2), so the logits' 1e-4 bound above carries over.
#[test]
fn onnxruntime_ensemble_probabilities_equal_the_mean_of_ours() {
    use ser_engine::model::onnx::{export_onnx_ensemble, OnnxMember};
    let name = "onnx_ensemble";
    let (cfg, p0, b0) = small_model();
    let (_, p1, b1) = small_model_seeded(12);
    let members = [
        OnnxMember {
            cfg: &cfg,
            params: &p0,
            buffers: &b0,
            db_offset: 40.0,
            db_scale: 40.0,
            perm: vec![0, 1, 2, 3],
        },
        OnnxMember {
            cfg: &cfg,
            params: &p1,
            buffers: &b1,
            db_offset: 40.0,
            db_scale: 40.0,
            perm: ENSEMBLE_PERM.to_vec(),
        },
    ];
    let bytes = export_onnx_ensemble(&members, &metadata()).unwrap();
    let model_path = dir(name).join("model.onnx");
    if std::env::var_os("SER_WRITE_ONNX_FIXTURES").is_some() {
        std::fs::create_dir_all(dir(name)).unwrap();
        std::fs::write(&model_path, &bytes).unwrap();
        eprintln!(
            "wrote {}; now run tools/onnx_fixtures.py tests/fixtures/{name} --probabilities",
            model_path.display()
        );
        return;
    }
    let committed = std::fs::read(&model_path).expect("tests/fixtures/onnx_ensemble/model.onnx");
    assert!(
        committed == bytes,
        "the exporter's output changed: regenerate the fixtures (SER_WRITE_ONNX_FIXTURES=1 \
         cargo test --release --test onnx_export; python tools/onnx_fixtures.py \
         tests/fixtures/{name} --probabilities)"
    );
    let mut models = [
        CpuModel::<f32>::from_params(cfg.clone(), p0.clone(), b0.clone()).unwrap(),
        CpuModel::<f32>::from_params(cfg.clone(), p1.clone(), b1.clone()).unwrap(),
    ];
    for t in LENGTHS {
        let x = read_npy(&dir(name).join(format!("input_{t}.npy"))).unwrap();
        let want = read_npy(&dir(name).join(format!("probabilities_{t}.npy"))).unwrap();
        assert_eq!(want.shape, vec![2, cfg.classes]);
        let scaled: Vec<f32> = x.data.iter().map(|&v| db_to_input(v)).collect();
        let input = Input {
            x: &scaled,
            batch: 2,
            t_max: t,
            lengths: &[t, t],
        };
        let l0 = models[0].infer(&input).unwrap();
        let l1 = models[1].infer(&input).unwrap();
        let softmax = |row: &[f32]| -> Vec<f64> {
            let m = row.iter().fold(f32::NEG_INFINITY, |a, &b| a.max(b)) as f64;
            let e: Vec<f64> = row.iter().map(|&v| (v as f64 - m).exp()).collect();
            let s: f64 = e.iter().sum();
            e.iter().map(|v| v / s).collect()
        };
        let mut worst = 0.0f64;
        let mut member_gap = 0.0f64;
        for clip in 0..2 {
            let r = clip * cfg.classes..(clip + 1) * cfg.classes;
            let (q0, q1) = (softmax(&l0[r.clone()]), softmax(&l1[r]));
            for c in 0..cfg.classes {
                let mean = (q0[c] + q1[ENSEMBLE_PERM[c]]) / 2.0;
                let got = want.data[clip * cfg.classes + c] as f64;
                assert!(got.is_finite(), "T={t}: {got}");
                worst = worst.max((mean - got).abs());
                member_gap = member_gap.max((q0[c] - q1[ENSEMBLE_PERM[c]]).abs());
            }
        }
        assert!(
            worst <= 1e-4,
            "T={t}: max |our mean - onnxruntime| = {worst:e}\n{:?}",
            want.data
        );
        // the members disagree, so a graph that dropped one would not pass
        assert!(
            member_gap > 1e-3,
            "T={t}: the members agree ({member_gap:e})"
        );
        eprintln!("T={t}: max |our mean - onnxruntime| = {worst:e}");
    }
}
