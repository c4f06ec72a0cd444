//! ArabEmoNet model description shared by every device: the configuration, the flat parameter
//! and buffer layouts (PyTorch `state_dict` names and order, see notes/MODEL_SPEC.md), the
//! initialisation (Philox `Purpose::Init`), a printable summary and safetensors checkpoints.
//!
//! Everything that holds weights (CPU reference, device engine) stores them as ONE flat
//! buffer in [`ParamLayout`] order, so checkpoints, optimizers and gradient comparisons work on
//! plain slices.
//!
//! Layer: model (below train, engine and cli). May use the shared modules (`rng`, `isa`,
//! `cache`, `atomic_file`); nothing else of the crate.

mod checkpoint;
pub mod onnx;

pub use checkpoint::{
    load_checkpoint, read_checkpoint_config, save_checkpoint, Checkpoint, CONFIG_KEY,
};

use crate::rng::{Purpose, Stream};
use anyhow::{bail, Result};

/// Hyper-parameters of the architecture (paper Table 1 by default).
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct ModelConfig {
    /// Mel bins of the input (must be divisible by 8: three 2×2 pools).
    pub n_mels: usize,
    /// Square conv kernel size (odd; padding kernel/2 keeps the size).
    pub kernel: usize,
    /// Output channels of the three conv stages.
    pub channels: [usize; 3],
    /// Width of the per-frame fully connected layer.
    pub fc: usize,
    /// LSTM hidden size per direction.
    pub hidden: usize,
    /// Stacked bidirectional LSTM layers.
    pub lstm_layers: usize,
    /// Emotion classes.
    pub classes: usize,
    /// Dropout probability of every dropout site.
    pub dropout: f32,
    /// Whether each conv is followed by BatchNorm2d.
    pub batchnorm: bool,
}

impl Default for ModelConfig {
    fn default() -> Self {
        Self {
            n_mels: 128,
            kernel: 7,
            channels: [32, 64, 128],
            fc: 128,
            hidden: 64,
            lstm_layers: 2,
            classes: 5,
            dropout: 0.3,
            batchnorm: true,
        }
    }
}

/// BatchNorm epsilon and momentum (PyTorch defaults).
pub const BN_EPS: f64 = 1e-5;
pub const BN_MOMENTUM: f64 = 0.1;
/// Shortest clip (in input frames) the model accepts: three halvings must leave ≥ 1 frame.
pub const MIN_FRAMES: usize = 8;

impl ModelConfig {
    /// Checks every field; the error says which one is wrong and why.
    pub fn validate(&self) -> Result<()> {
        if self.kernel == 0 || self.kernel.is_multiple_of(2) {
            bail!("kernel size must be odd and ≥ 1 (got {})", self.kernel);
        }
        if self.n_mels == 0 || !self.n_mels.is_multiple_of(8) {
            bail!(
                "n_mels must be a positive multiple of 8 (three 2×2 poolings), got {}",
                self.n_mels
            );
        }
        if self.channels.contains(&0) {
            bail!(
                "every conv stage needs ≥ 1 channel (got {:?})",
                self.channels
            );
        }
        if self.fc == 0 || self.hidden == 0 || self.lstm_layers == 0 {
            bail!(
                "fc ({}), hidden ({}) and lstm_layers ({}) must all be ≥ 1",
                self.fc,
                self.hidden,
                self.lstm_layers
            );
        }
        if self.classes < 2 {
            bail!("need at least 2 classes (got {})", self.classes);
        }
        if !(self.dropout >= 0.0 && self.dropout < 1.0) {
            bail!("dropout must be in [0, 1) (got {})", self.dropout);
        }
        Ok(())
    }

    /// Channels entering conv stage `s` (0-based).
    pub fn stage_in(&self, s: usize) -> usize {
        if s == 0 {
            1
        } else {
            self.channels[s - 1]
        }
    }

    /// Mel bins entering conv stage `s` (0-based): n_mels / 2^s.
    pub fn stage_mels(&self, s: usize) -> usize {
        self.n_mels >> s
    }

    /// Features per frame after the conv stack: `channels[2] × n_mels/8`.
    pub fn fc_in(&self) -> usize {
        self.channels[2] * (self.n_mels / 8)
    }

    /// Frames after the three poolings: floor(floor(floor(t/2)/2)/2) = t/8.
    pub fn frames_out(t: usize) -> usize {
        t / 8
    }

    /// Width of the LSTM output per frame (both directions).
    pub fn lstm_out(&self) -> usize {
        2 * self.hidden
    }

    /// Input width of LSTM layer `l`.
    pub fn lstm_in(&self, l: usize) -> usize {
        if l == 0 {
            self.fc
        } else {
            2 * self.hidden
        }
    }
}

/// One named tensor inside a flat buffer.
#[derive(Clone, Debug, PartialEq)]
pub struct Entry {
    pub name: String,
    pub shape: Vec<usize>,
    pub offset: usize,
    pub len: usize,
}

/// Ordered named tensors packed back to back in one flat buffer.
#[derive(Clone, Debug, PartialEq, Default)]
pub struct Layout {
    pub entries: Vec<Entry>,
}

impl Layout {
    fn push(&mut self, name: impl Into<String>, shape: &[usize]) {
        let offset = self.total();
        let len = shape.iter().product();
        self.entries.push(Entry {
            name: name.into(),
            shape: shape.to_vec(),
            offset,
            len,
        });
    }

    /// Elements in the whole buffer.
    pub fn total(&self) -> usize {
        self.entries.last().map_or(0, |e| e.offset + e.len)
    }

    /// The entry called `name`.
    pub fn get(&self, name: &str) -> Option<&Entry> {
        self.entries.iter().find(|e| e.name == name)
    }

    /// Offset and length of `name`; panics on an unknown name (a programming error: names
    /// are fixed by the layout constructor).
    pub fn range(&self, name: &str) -> std::ops::Range<usize> {
        let e = self
            .get(name)
            .unwrap_or_else(|| panic!("no tensor named {name} in the layout"));
        e.offset..e.offset + e.len
    }
}

/// Trainable parameters, PyTorch `state_dict` names and order (MODEL_SPEC.md).
#[derive(Clone, Debug, PartialEq)]
pub struct ParamLayout(pub Layout);
/// BatchNorm running statistics: running_mean, running_var, num_batches_tracked (1 element
/// each, stored as f32 in the buffer). Empty without BatchNorm.
#[derive(Clone, Debug, PartialEq)]
pub struct BufferLayout(pub Layout);

impl std::ops::Deref for ParamLayout {
    type Target = Layout;
    fn deref(&self) -> &Layout {
        &self.0
    }
}
impl std::ops::Deref for BufferLayout {
    type Target = Layout;
    fn deref(&self) -> &Layout {
        &self.0
    }
}

/// Suffixes of the LSTM tensors of one layer `l` and direction.
pub fn lstm_names(l: usize, reverse: bool) -> [String; 4] {
    let sfx = if reverse { "_reverse" } else { "" };
    [
        format!("lstm.weight_ih_l{l}{sfx}"),
        format!("lstm.weight_hh_l{l}{sfx}"),
        format!("lstm.bias_ih_l{l}{sfx}"),
        format!("lstm.bias_hh_l{l}{sfx}"),
    ]
}

impl ParamLayout {
    /// The parameter layout of `cfg`.
    pub fn new(cfg: &ModelConfig) -> Self {
        let mut p = Layout::default();
        let k = cfg.kernel;
        for s in 0..3 {
            let (ci, co) = (cfg.stage_in(s), cfg.channels[s]);
            p.push(format!("conv{}.weight", s + 1), &[co, ci, k, k]);
            p.push(format!("conv{}.bias", s + 1), &[co]);
            if cfg.batchnorm {
                p.push(format!("bn{}.weight", s + 1), &[co]);
                p.push(format!("bn{}.bias", s + 1), &[co]);
            }
        }
        p.push("fc.weight", &[cfg.fc, cfg.fc_in()]);
        p.push("fc.bias", &[cfg.fc]);
        let h = cfg.hidden;
        for l in 0..cfg.lstm_layers {
            for rev in [false, true] {
                let [wi, wh, bi, bh] = lstm_names(l, rev);
                p.push(wi, &[4 * h, cfg.lstm_in(l)]);
                p.push(wh, &[4 * h, h]);
                p.push(bi, &[4 * h]);
                p.push(bh, &[4 * h]);
            }
        }
        p.push("attention.weight", &[1, 2 * h]);
        p.push("attention.bias", &[1]);
        p.push("classifier.weight", &[cfg.classes, 2 * h]);
        p.push("classifier.bias", &[cfg.classes]);
        ParamLayout(p)
    }
}

impl BufferLayout {
    /// The buffer layout of `cfg` (empty without BatchNorm).
    pub fn new(cfg: &ModelConfig) -> Self {
        let mut b = Layout::default();
        if cfg.batchnorm {
            for s in 0..3 {
                let c = cfg.channels[s];
                b.push(format!("bn{}.running_mean", s + 1), &[c]);
                b.push(format!("bn{}.running_var", s + 1), &[c]);
                b.push(format!("bn{}.num_batches_tracked", s + 1), &[]);
            }
        }
        BufferLayout(b)
    }
}

/// Initial parameters: PyTorch default distributions drawn from Philox (`Purpose::Init`,
/// step 0, element n of the flat buffer uses uniform(n)).
pub fn init_params(cfg: &ModelConfig, seed: u64) -> Vec<f32> {
    let layout = ParamLayout::new(cfg);
    let rng = Stream::new(seed, Purpose::Init, 0);
    let mut p = vec![0f32; layout.total()];
    for e in &layout.entries {
        let bound = if e.name.starts_with("bn") {
            // BatchNorm: weight 1, bias 0.
            let v = if e.name.ends_with("weight") { 1.0 } else { 0.0 };
            p[e.offset..e.offset + e.len].fill(v);
            continue;
        } else if e.name.starts_with("lstm") {
            1.0 / (cfg.hidden as f64).sqrt()
        } else {
            // conv / linear: fan_in of the layer's weight (biases share the weight's bound).
            let wname = e.name.replace(".bias", ".weight");
            let w = layout.get(&wname).expect("every bias has a weight");
            let fan_in: usize = w.shape[1..].iter().product();
            1.0 / (fan_in as f64).sqrt()
        };
        for (n, v) in p.iter_mut().enumerate().skip(e.offset).take(e.len) {
            let u = rng.uniform(n as u64) as f64;
            *v = ((2.0 * u - 1.0) * bound) as f32;
        }
    }
    p
}

/// Initial buffers: running_mean 0, running_var 1, num_batches_tracked 0.
pub fn init_buffers(cfg: &ModelConfig) -> Vec<f32> {
    let layout = BufferLayout::new(cfg);
    let mut b = vec![0f32; layout.total()];
    for e in &layout.entries {
        if e.name.ends_with("running_var") {
            b[e.offset..e.offset + e.len].fill(1.0);
        }
    }
    b
}

/// Layer-by-layer table (name, shape, count), the total, and the BatchNorm share.
pub fn summary(cfg: &ModelConfig) -> String {
    use std::fmt::Write;
    let layout = ParamLayout::new(cfg);
    let mut s = String::new();
    let _ = writeln!(s, "{:<28} {:>14} {:>10}", "tensor", "shape", "params");
    let mut bn = 0;
    for e in &layout.entries {
        let shape = format!("{:?}", e.shape);
        let _ = writeln!(s, "{:<28} {:>14} {:>10}", e.name, shape, e.len);
        if e.name.starts_with("bn") {
            bn += e.len;
        }
    }
    let total = layout.total();
    let _ = writeln!(s, "{:<28} {:>14} {:>10}", "total", "", total);
    let _ = writeln!(s, "{:<28} {:>14} {:>10}", "  of which BatchNorm", "", bn);
    let _ = writeln!(
        s,
        "{:<28} {:>14} {:>10}",
        "  without BatchNorm",
        "",
        total - bn
    );
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    // Parameter counts per kernel size (paper Table 3): tests/model.rs.

    #[test]
    fn validate_rejects_bad_configs() {
        assert!(ModelConfig::default().validate().is_ok());
        for bad in [
            ModelConfig {
                kernel: 4,
                ..Default::default()
            },
            ModelConfig {
                kernel: 0,
                ..Default::default()
            },
            ModelConfig {
                n_mels: 100,
                ..Default::default()
            },
            ModelConfig {
                classes: 1,
                ..Default::default()
            },
            ModelConfig {
                dropout: 1.0,
                ..Default::default()
            },
            ModelConfig {
                dropout: f32::NAN,
                ..Default::default()
            },
            ModelConfig {
                hidden: 0,
                ..Default::default()
            },
        ] {
            assert!(bad.validate().is_err(), "{bad:?}");
        }
    }

    #[test]
    fn layout_order_and_offsets() {
        let cfg = ModelConfig::default();
        let l = ParamLayout::new(&cfg);
        assert_eq!(l.entries[0].name, "conv1.weight");
        assert_eq!(l.entries[0].shape, vec![32, 1, 7, 7]);
        assert_eq!(l.entries.last().unwrap().name, "classifier.bias");
        for w in l.entries.windows(2) {
            assert_eq!(w[0].offset + w[0].len, w[1].offset);
        }
        assert_eq!(
            l.get("lstm.weight_ih_l1_reverse").unwrap().shape,
            vec![256, 128]
        );
        let b = BufferLayout::new(&cfg);
        assert_eq!(b.total(), 2 * (32 + 64 + 128) + 3);
    }

    #[test]
    fn init_bounds_and_determinism() {
        let cfg = ModelConfig::default();
        let p = init_params(&cfg, 7);
        assert_eq!(p, init_params(&cfg, 7));
        assert_ne!(p, init_params(&cfg, 8));
        let l = ParamLayout::new(&cfg);
        let fc = &p[l.range("fc.weight")];
        let bound = 1.0 / (2048f32).sqrt();
        assert!(fc.iter().all(|v| v.abs() <= bound));
        // A uniform over [-b, b] has variance b²/3; 262k samples put the estimate within 2%.
        let var = fc.iter().map(|v| v * v).sum::<f32>() / fc.len() as f32;
        assert!((var / (bound * bound / 3.0) - 1.0).abs() < 0.02, "{var}");
        assert!(p[l.range("bn1.weight")].iter().all(|&v| v == 1.0));
        assert!(p[l.range("bn2.bias")].iter().all(|&v| v == 0.0));
        let lb = 1.0 / 8.0;
        assert!(p[l.range("lstm.weight_hh_l0")]
            .iter()
            .all(|v| v.abs() <= lb));
        let b = init_buffers(&cfg);
        let bl = BufferLayout::new(&cfg);
        assert!(b[bl.range("bn3.running_var")].iter().all(|&v| v == 1.0));
        assert!(b[bl.range("bn3.running_mean")].iter().all(|&v| v == 0.0));
    }

    #[test]
    fn summary_lists_every_tensor() {
        let s = summary(&ModelConfig::default());
        assert!(s.contains("lstm.weight_hh_l1_reverse"));
        assert!(s.contains("965702"));
        assert!(s.contains("965254"));
    }
}
