//! `--precision bf16`: a whole CPU training step (forward, backward, Adam) and inference in
//! bf16 against fp32, within stated tolerances. Skipped, with a notice, on CPUs without
//! AVX512-BF16. One test function: the precision is process-wide.

use ser_engine::cpu::bf16::{available, set_precision, Precision};
use ser_engine::cpu::{cross_entropy, Adam, CpuModel, Input, Mode};
use ser_engine::model::ModelConfig;
use ser_engine::rng::{Purpose, Stream};

struct Step {
    loss: f64,
    logits: Vec<f32>,
    grads: Vec<f32>,
    params: Vec<f32>,
    infer: Vec<f32>,
}

fn step(p: Precision, round_input: bool) -> Step {
    set_precision(p).unwrap();
    let cfg = ModelConfig::default(); // 128 mels, k = 7: the paper model
    let (b, t) = (4usize, 72usize);
    let lens = [72usize, 61, 47, 33];
    let s = Stream::new(5, Purpose::Test, 0);
    let mut x: Vec<f32> = (0..b * cfg.n_mels * t)
        .map(|i| s.normal(i as u64))
        .collect();
    if round_input {
        use ser_engine::cpu::bf16::{from_bf16, to_bf16};
        x.iter_mut().for_each(|v| *v = from_bf16(to_bf16(*v)));
    }
    let labels: Vec<usize> = (0..b).map(|i| i % cfg.classes).collect();
    let inp = Input {
        x: &x,
        batch: b,
        t_max: t,
        lengths: &lens,
    };
    let mut model = CpuModel::<f32>::new(cfg.clone(), 9);
    let mut adam = Adam::new(model.params.len(), 1e-3, 1e-5);
    model.zero_grads();
    let f = model.forward(&inp, Mode::Train { seed: 3, step: 0 });
    let (loss, dl, _) = cross_entropy(&f.logits, &labels, cfg.classes, None, 0.0);
    model.backward(&f, &dl);
    let grads = model.grads.clone();
    adam.step(&mut model.params, &model.grads);
    let infer = model.infer(&inp).unwrap();
    Step {
        loss: loss as f64,
        logits: f.logits,
        grads,
        params: model.params.clone(),
        infer,
    }
}

fn rel(a: &[f32], b: &[f32]) -> f64 {
    let (mut d, mut n) = (0.0f64, 0.0f64);
    for (x, y) in a.iter().zip(b) {
        d += (*x as f64 - *y as f64).powi(2);
        n += (*y as f64).powi(2);
    }
    (d / n.max(1e-300)).sqrt()
}

#[test]
fn bf16_training_step_matches_fp32() {
    if !available() {
        eprintln!("NOTICE: skipping bf16_training_step_matches_fp32: this CPU has no AVX512-BF16");
        return;
    }
    // The bf16 GEMMs sit in the FFT convolutions: force them (and no timing cache writes).
    std::env::set_var("SER_CPU_CONV", "fft");
    std::env::set_var("SER_CPU_TUNE_CACHE", "off");
    let a = step(Precision::Fp32, false);
    let b = step(Precision::Bf16, false);
    // fp32 with only the input spectrogram rounded to bf16: how sensitive the step is to
    // a 2^-8 relative perturbation at all.
    let r = step(Precision::Fp32, true);
    set_precision(Precision::Fp32).unwrap();
    let e_logits = rel(&b.logits, &a.logits);
    let e_infer = rel(&b.infer, &a.infer);
    let e_grad = rel(&b.grads, &a.grads);
    let e_loss = (b.loss - a.loss).abs() / a.loss.abs();
    eprintln!(
        "bf16 vs fp32: logits {e_logits:.2e}, inference logits {e_infer:.2e}, loss {e_loss:.2e}, gradients {e_grad:.2e} (relative norms)"
    );
    let e_round = rel(&r.grads, &a.grads);
    eprintln!("fp32 with only the input rounded to bf16: gradients {e_round:.2e}");
    assert!(e_logits < 2e-2, "logits differ by {e_logits:e}");
    assert!(e_infer < 2e-2, "inference logits differ by {e_infer:e}");
    assert!(e_loss < 2e-2, "loss differs by {e_loss:e}");
    // Gradients: the convolution and BatchNorm ones are ill-conditioned at initialisation
    // (rounding only the input to bf16, in fp32, moves conv1.weight's gradient by ~8%), so the
    // limit is relative to that sensitivity, per tensor: bf16's error ≤ 3× the error from
    // rounding the input alone, + 1e-3. The conv biases are left out: ahead of BatchNorm their
    // true gradient is ~0 and both errors are pure noise.
    let layout = ser_engine::model::ParamLayout::new(&ModelConfig::default());
    for e in &layout.0.entries {
        let rg = e.offset..e.offset + e.shape.iter().product::<usize>();
        let eb = rel(&b.grads[rg.clone()], &a.grads[rg.clone()]);
        let er = rel(&r.grads[rg.clone()], &a.grads[rg]);
        eprintln!(
            "  {:28} bf16 {eb:.2e}   fp32 with bf16-rounded input {er:.2e}",
            e.name
        );
        if !(e.name.starts_with("conv") && e.name.ends_with("bias")) {
            assert!(
                eb <= 3.0 * er + 1e-3,
                "{}: gradient differs by {eb:e} (limit 3 × {er:e} + 1e-3)",
                e.name
            );
        }
    }
    // bf16 was actually used (else the two runs would agree to the bit)
    assert!(e_grad > 1e-6, "bf16 made no difference: {e_grad:e}");
    // The weights stay fp32 masters: after Adam they are not all bf16-representable, and
    // each moved by at most lr (Adam's first step) in both runs.
    let off_grid = b
        .params
        .iter()
        .filter(|p| p.to_bits() & 0xffff != 0)
        .count();
    assert!(off_grid > b.params.len() / 2, "weights look bf16-rounded");
    let worst = a
        .params
        .iter()
        .zip(&b.params)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0f32, f32::max);
    assert!(
        worst <= 2.0 * 1e-3 + 1e-6,
        "weights after Adam differ by {worst}"
    );
}

/// `--precision bf16` runs (bench prints it) where the CPU has AVX512-BF16 and fails with a
/// clear message elsewhere; wrong combinations fail before any work.
#[test]
fn cli_precision_option() {
    use assert_cmd::Command;
    use predicates::str::contains;
    let bench = |extra: &[&str], isa: &str| {
        let mut c = Command::cargo_bin("ser-engine").unwrap();
        c.env("SER_CPU_TUNE_CACHE", "off")
            .env("SER_CPU_CONV", "fft")
            .env("SER_CPU_ISA", isa)
            .args(["--threads", "1"])
            .args(extra)
            .args(["bench", "train", "--device", "cpu", "--batch", "2"])
            .args(["--frames", "40", "--steps", "1", "--kernel-size", "3"]);
        c.assert()
    };
    if available() {
        bench(&["--precision", "bf16"], "auto")
            .success()
            .stdout(contains("precision bf16"));
    } else {
        eprintln!("NOTICE: this CPU has no AVX512-BF16: checking the error only");
        bench(&["--precision", "bf16"], "auto")
            .failure()
            .stderr(contains("AVX512-BF16"));
    }
    bench(&["--precision", "fp32"], "auto")
        .success()
        .stdout(contains("precision fp32"));
    // AVX-512 capped off: bf16 is refused, naming the cause
    bench(&["--precision", "bf16"], "avx2")
        .failure()
        .stderr(contains("AVX512-BF16"));
    Command::cargo_bin("ser-engine")
        .unwrap()
        .args(["--precision", "bf16", "--device", "sim", "bench", "train"])
        .assert()
        .failure()
        .stderr(contains("cpu device only"));
    Command::cargo_bin("ser-engine")
        .unwrap()
        .args(["--precision", "fp16", "info"])
        .assert()
        .failure()
        .stderr(contains("fp32"));
}
