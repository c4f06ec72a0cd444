//! Model-level checks: parameter counts per kernel size (MODEL_SPEC.md / paper Table 3),
//! checkpoint round trip through the CPU model, and load errors that name the problem.

use ser_engine::cpu::{CpuModel, Input, Mode};
use ser_engine::model::{load_checkpoint, save_checkpoint, ModelConfig, ParamLayout};
use std::collections::BTreeMap;

#[test]
fn parameter_counts_per_kernel() {
    for (k, n) in [
        (3, 554_374),
        (5, 718_726),
        (7, 965_254),
        (9, 1_293_958),
        (11, 1_704_838),
    ] {
        let no_bn = ModelConfig {
            kernel: k,
            batchnorm: false,
            ..Default::default()
        };
        assert_eq!(ParamLayout::new(&no_bn).total(), n, "k={k}");
        let bn = ModelConfig {
            kernel: k,
            ..Default::default()
        };
        assert_eq!(ParamLayout::new(&bn).total(), n + 448, "k={k} + BN");
        assert_eq!(CpuModel::<f32>::new(bn, 1).params.len(), n + 448);
    }
}

#[test]
fn checkpoint_round_trip_gives_same_logits() {
    let cfg = ModelConfig {
        n_mels: 16,
        channels: [4, 8, 8],
        fc: 8,
        hidden: 6,
        classes: 3,
        ..Default::default()
    };
    let mut m = CpuModel::<f32>::new(cfg.clone(), 9);
    let x: Vec<f32> = (0..2 * 16 * 20)
        .map(|i| ((i * 7919) % 101) as f32 / 50.0 - 1.0)
        .collect();
    let lens = [20, 12];
    let inp = Input {
        x: &x,
        batch: 2,
        t_max: 20,
        lengths: &lens,
    };
    m.forward(&inp, Mode::Train { seed: 1, step: 0 }); // moves the running stats
    let want = m.forward(&inp, Mode::Eval).logits;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("ck.safetensors");
    let meta: BTreeMap<String, String> = [("note".to_string(), "x".to_string())].into();
    save_checkpoint(&path, &cfg, &m.params, &m.buffers, &meta).unwrap();
    let (p, b, meta2) = load_checkpoint(&path, &cfg).unwrap();
    assert_eq!(meta2, meta);
    let mut m2 = CpuModel::from_params(cfg, p, b).unwrap();
    assert_eq!(m2.forward(&inp, Mode::Eval).logits, want);
}

#[test]
fn load_errors_name_file_and_tensor() {
    let cfg = ModelConfig {
        n_mels: 16,
        channels: [4, 8, 8],
        fc: 8,
        hidden: 6,
        classes: 3,
        ..Default::default()
    };
    let e = format!(
        "{:#}",
        load_checkpoint(std::path::Path::new("no/such/file.safetensors"), &cfg).unwrap_err()
    );
    assert!(e.contains("no/such/file.safetensors"), "{e}");
    // A checkpoint of the same config with one tensor of the wrong shape.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad.safetensors");
    let good = CpuModel::<f32>::new(cfg.clone(), 1);
    save_checkpoint(&path, &cfg, &good.params, &good.buffers, &BTreeMap::new()).unwrap();
    let bytes = std::fs::read(&path).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let (_, md) = safetensors::SafeTensors::read_metadata(&bytes).unwrap();
    let mut tensors: Vec<(String, Vec<usize>, safetensors::Dtype, Vec<u8>)> = st
        .tensors()
        .into_iter()
        .map(|(n, v)| (n, v.shape().to_vec(), v.dtype(), v.data().to_vec()))
        .collect();
    for t in tensors.iter_mut() {
        if t.0 == "fc.bias" {
            t.1 = vec![2, 4];
        }
    }
    let views: Vec<(String, safetensors::tensor::TensorView)> = tensors
        .iter()
        .map(|(n, s, d, b)| {
            (
                n.clone(),
                safetensors::tensor::TensorView::new(*d, s.clone(), b).unwrap(),
            )
        })
        .collect();
    safetensors::tensor::serialize_to_file(views, md.metadata().clone(), &path).unwrap();
    let e = format!("{:#}", load_checkpoint(&path, &cfg).unwrap_err());
    assert!(
        e.contains("fc.bias") && e.contains("bad.safetensors") && e.contains("[2, 4]"),
        "{e}"
    );
}
