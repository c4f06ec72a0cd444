//! Corpus, features, model and training options shared by every command that trains
//! (`train`, `cv`): the clap flags, their presets (the paper's recipe on a real corpus, a short
//! one on the demo corpus) and the configs they turn into.
//!
//! Layer: train (below cli, above engine and cpu). May use `backend`, `cpu`, `features`,
//! `model`, `audio`, `device` and the shared modules (`rng`, `isa`, `cache`, `atomic_file`);
//! never `cli`, and `engine` only in `devices.rs` (the one place a backend is chosen).

use crate::audio::corpus::CorpusOptions;
use crate::backend::OptimConfig;
use crate::features::augment::AugmentConfig;
use crate::features::MelConfig;
use crate::model::{InputNorm, ModelConfig};
use crate::train::fit::FitConfig;
use crate::train::recipe::{self, Recipe, RecipeDefaults};
use anyhow::{bail, Result};
use clap::Args;
use serde::Serialize;
use std::path::PathBuf;

/// One end of an option's allowed range.
#[derive(Clone, Copy, Debug)]
pub enum Limit {
    /// The value itself is allowed.
    Incl(f64),
    /// Only values strictly beyond it are allowed.
    Excl(f64),
}

/// Checks `value` of command-line option `option` against `lo..hi` (finite values only), with
/// an error naming the option, the value and the range: `--lr -1: must be > 0 and ≤ 10`.
pub fn check_range(option: &str, value: f64, lo: Limit, hi: Limit) -> Result<()> {
    let ok_lo = match lo {
        Limit::Incl(l) => value >= l,
        Limit::Excl(l) => value > l,
    };
    let ok_hi = match hi {
        Limit::Incl(h) => value <= h,
        Limit::Excl(h) => value < h,
    };
    if value.is_finite() && ok_lo && ok_hi {
        return Ok(());
    }
    let lo_s = match lo {
        Limit::Incl(l) => format!("≥ {l}"),
        Limit::Excl(l) => format!("> {l}"),
    };
    let hi_s = match hi {
        Limit::Incl(h) => format!("≤ {h}"),
        Limit::Excl(h) => format!("< {h}"),
    };
    let first = if !value.is_finite() {
        "must be a finite number "
    } else {
        "must be "
    };
    let range = if !value.is_finite() || (!ok_lo && !ok_hi) {
        format!("{lo_s} and {hi_s}")
    } else if !ok_lo {
        format!("{lo_s} (range: {lo_s} and {hi_s})")
    } else {
        format!("{hi_s} (range: {lo_s} and {hi_s})")
    };
    bail!("--{option} {value}: {first}{range}")
}

/// clap's parser for whole-number options (`value_parser = Whole::<usize>::new()` with
/// `allow_negative_numbers = true`): a negative number or a fraction is refused naming the
/// option and the value, not taken for a flag; the option's own range is checked by its
/// command's `validate`.
#[derive(Clone, Copy, Debug)]
pub struct Whole<T>(std::marker::PhantomData<T>);

impl<T> Whole<T> {
    #[allow(clippy::new_without_default)]
    pub fn new() -> Self {
        Self(std::marker::PhantomData)
    }
}

impl<T: TryFrom<u64> + Clone + Send + Sync + 'static> clap::builder::TypedValueParser for Whole<T> {
    type Value = T;
    fn parse_ref(
        &self,
        cmd: &clap::Command,
        arg: Option<&clap::Arg>,
        value: &std::ffi::OsStr,
    ) -> std::result::Result<T, clap::Error> {
        let text = value.to_string_lossy();
        let name = arg.and_then(|a| a.get_long()).unwrap_or("value");
        let why = match text.trim().parse::<i128>() {
            Ok(v) if v < 0 => "must be ≥ 0 (a whole number; the range is in --help)".to_string(),
            Ok(_) => match text
                .trim()
                .parse::<u64>()
                .ok()
                .and_then(|v| T::try_from(v).ok())
            {
                Some(v) => return Ok(v),
                None => "is too large (the range is in --help)".to_string(),
            },
            Err(_) => "must be a whole number (the range is in --help)".to_string(),
        };
        let mut e = clap::Error::raw(
            clap::error::ErrorKind::ValueValidation,
            format!("--{name} {text}: {why}\n"),
        );
        e = e.with_cmd(cmd);
        Err(e)
    }
}

/// Sample rates the front end accepts, Hz (telephone speech to studio audio).
pub const SAMPLE_RATE_RANGE: (u32, u32) = (1_000, 192_000);
/// Mel bands: a positive multiple of 8 (three 2×2 poolings) up to this many.
pub const MAX_N_MELS: usize = 512;
/// Convolution kernel sizes: odd, up to this size.
pub const MAX_KERNEL_SIZE: usize = 31;
/// Default bound on a training clip's length, seconds (see `max_seconds`).
pub const DEFAULT_MAX_SECONDS: f64 = 10.0;
/// Largest `--max-seconds`: ten minutes (also keeps a clip within the noise augmentation's
/// per-clip random stream of 2^28 samples at 192 kHz).
pub const MAX_SECONDS: f64 = 600.0;

/// Corpus, features, model and training options shared by `train` and `cv`. Every numeric
/// option's range is checked in one place, `TrainOpts::validate`; negative numbers reach it
/// (rather than being refused by the parser as unknown flags).
#[derive(Debug, Args, Clone, PartialEq, Serialize)]
pub struct TrainOpts {
    /// Corpus folder (or CSV manifest). Repeat it to train on several corpora as one: their
    /// labels are merged by name, or mapped by --label-map, and speakers are told apart by
    /// corpus. Without it: the built-in demo corpus.
    #[arg(long)]
    pub data: Vec<PathBuf>,
    /// A text file mapping the corpora's labels onto common ones, one `label -> common` a
    /// line (`corpus: label -> common` for one corpus only; `label -> -` leaves its clips
    /// out, with a warning). Every label needs an entry (docs/guide.md, "Fine-tuning and
    /// several corpora").
    #[arg(long, value_name = "FILE")]
    pub label_map: Option<PathBuf>,
    #[command(flatten)]
    #[serde(flatten)]
    pub corpus: CorpusOptions,
    /// Resample audio to this rate, 1000 to 192000 Hz (default: the corpus's native rate).
    #[arg(long, allow_negative_numbers = true, value_parser = crate::train::options::Whole::<u32>::new())]
    pub sample_rate: Option<u32>,
    /// Mel bands: a multiple of 8, at most 512.
    #[arg(long, default_value_t = 128, allow_negative_numbers = true, value_parser = crate::train::options::Whole::<usize>::new())]
    pub n_mels: usize,
    /// Convolution kernel size: odd, at most 31 (3, 5, 7, 9, 11 in the paper).
    #[arg(long, default_value_t = 7, allow_negative_numbers = true, value_parser = crate::train::options::Whole::<usize>::new())]
    pub kernel_size: usize,
    /// Longest stretch of a clip the model sees, seconds (> 0, at most 600): a longer training
    /// clip is cropped at a random place each epoch; validation and `eval` score its middle.
    #[arg(long, default_value_t = DEFAULT_MAX_SECONDS, allow_negative_numbers = true)]
    pub max_seconds: f64,
    /// Leave out BatchNorm after each convolution.
    #[arg(long)]
    pub no_batchnorm: bool,
    /// Input normalisation: `none`, or `utterance` (each Mel band of each clip to zero mean
    /// and unit population variance over the clip's valid frames, ε = 1 dB²). Part of the
    /// model: eval, predict and the ONNX export apply it too.
    #[arg(long, value_enum, default_value_t = InputNorm::None)]
    pub norm: InputNorm,
    /// Advanced (tests, experiments): channels of the three conv stages, e.g. 4,8,8
    /// [default: 32,64,128 as the paper].
    #[arg(long, hide = true, value_delimiter = ',')]
    pub channels: Option<Vec<usize>>,
    /// Advanced: width of the per-frame FC layer [default: 128].
    #[arg(long, hide = true, allow_negative_numbers = true, value_parser = crate::train::options::Whole::<usize>::new())]
    pub fc_size: Option<usize>,
    /// Advanced: LSTM hidden size per direction [default: 64].
    #[arg(long, hide = true, allow_negative_numbers = true, value_parser = crate::train::options::Whole::<usize>::new())]
    pub hidden_size: Option<usize>,
    /// Dropout probability (conv stages, FC, between LSTM layers).
    #[arg(long, default_value_t = 0.3, allow_negative_numbers = true)]
    pub dropout: f32,
    /// Defaults for the flags below that are not given: `paper` (the paper's recipe; the
    /// short preset on the demo corpus) or `strong` (cosine to zero from a 10× higher peak,
    /// 40 epochs, no early stopping; docs/guide.md, "A stronger recipe").
    #[arg(long, value_enum, default_value_t = Recipe::Paper)]
    pub recipe: Recipe,
    /// Maximum number of epochs [default: 100; 20 on the demo corpus]. With --resume, a
    /// larger value extends the run.
    #[arg(long, allow_negative_numbers = true, value_parser = crate::train::options::Whole::<usize>::new())]
    pub epochs: Option<usize>,
    /// Clips per batch [default: 32, as the paper; 16 on the demo corpus].
    #[arg(long, allow_negative_numbers = true, value_parser = crate::train::options::Whole::<usize>::new())]
    pub batch_size: Option<usize>,
    /// Adam learning rate [default: 1e-4, as the paper; 1e-3 on the demo corpus].
    #[arg(long, allow_negative_numbers = true)]
    pub lr: Option<f64>,
    /// Adam weight decay (L2 added to the gradient, as torch.optim.Adam).
    #[arg(long, default_value_t = 1e-5, allow_negative_numbers = true)]
    pub weight_decay: f64,
    /// Decoupled weight decay (AdamW) instead of L2.
    #[arg(long)]
    pub adamw: bool,
    /// Learning-rate schedule: `plateau` (the paper's reduce-on-plateau) or `cosine` (warmup
    /// over the first epoch, then cosine decay to zero at the last epoch)
    /// [default: plateau; cosine on the demo corpus].
    #[arg(long, value_enum)]
    pub schedule: Option<crate::train::schedule::Schedule>,
    /// Reduce-on-plateau factor and patience (epochs) on validation loss.
    #[arg(long, default_value_t = 0.5, allow_negative_numbers = true)]
    pub plateau_factor: f64,
    #[arg(long, default_value_t = 5, allow_negative_numbers = true, value_parser = crate::train::options::Whole::<usize>::new())]
    pub plateau_patience: usize,
    /// Stop after this many epochs without a better validation loss.
    #[arg(long, default_value_t = 10, allow_negative_numbers = true, value_parser = crate::train::options::Whole::<usize>::new())]
    pub early_stop: usize,
    /// Clip the global gradient norm to this value (0: off).
    #[arg(long, default_value_t = 0.0, allow_negative_numbers = true)]
    pub clip_grad: f64,
    /// Label smoothing, 0 to <1.
    #[arg(long, default_value_t = 0.0, allow_negative_numbers = true)]
    pub label_smoothing: f64,
    /// Weight the loss by inverse class frequency.
    #[arg(long)]
    pub class_weights: bool,
    /// No augmentation at all (no noise, no SpecAugment) [default on the demo corpus].
    #[arg(long)]
    pub no_augment: bool,
    /// Augment (noise + SpecAugment) even on the demo corpus.
    #[arg(long, conflicts_with = "no_augment")]
    pub augment: bool,
    /// Probability that a training clip gets Gaussian noise, and its SNR range in dB.
    #[arg(long, default_value_t = 0.5, allow_negative_numbers = true)]
    pub noise_prob: f32,
    #[arg(long, default_value_t = 10.0, allow_negative_numbers = true)]
    pub snr_min: f32,
    #[arg(long, default_value_t = 30.0, allow_negative_numbers = true)]
    pub snr_max: f32,
    /// SpecAugment: number and widest width of frequency masks (bins) and time masks
    /// (fraction of the clip's frames).
    #[arg(long, default_value_t = 2, allow_negative_numbers = true, value_parser = crate::train::options::Whole::<usize>::new())]
    pub freq_masks: usize,
    #[arg(long, default_value_t = 15, allow_negative_numbers = true, value_parser = crate::train::options::Whole::<usize>::new())]
    pub freq_mask_max: usize,
    #[arg(long, default_value_t = 2, allow_negative_numbers = true, value_parser = crate::train::options::Whole::<usize>::new())]
    pub time_masks: usize,
    #[arg(long, default_value_t = 0.1, allow_negative_numbers = true)]
    pub time_mask_frac: f32,
    /// Keep an exponential moving average of the weights with this decay (> 0, < 1; e.g.
    /// 0.999, at most (1+step)/(10+step) early on) and use it for validation, the best
    /// checkpoint and the saved model [default: off].
    #[arg(long, allow_negative_numbers = true)]
    pub ema: Option<f64>,
    /// Mixup: mix each training batch with a permutation of itself, log-Mel inputs and
    /// (label-smoothed) targets alike, with one λ ~ Beta(ALPHA, ALPHA) per batch; 0 is off,
    /// otherwise > 0 and at most 10 (e.g. 0.2 to 0.4). Validation and eval never mix.
    #[arg(
        long,
        value_name = "ALPHA",
        default_value_t = 0.0,
        allow_negative_numbers = true
    )]
    pub mixup: f64,
    /// Speed perturbation: resample each training clip by one of these factors (tempo and
    /// pitch move together), drawn per clip and epoch; 1 to 8 factors, each 0.5 to 2, e.g.
    /// 0.9,1.0,1.1 [default: off, i.e. 1.0]. Validation and eval see the clips as they are.
    #[arg(
        long,
        value_name = "LIST",
        value_delimiter = ',',
        allow_negative_numbers = true
    )]
    pub speed: Option<Vec<f64>>,
    /// Start from the weights of this run folder (its model.safetensors) instead of a random
    /// initialisation. The architecture, input normalisation, sample rate and Mel settings
    /// are the run's (a differing flag is refused); the classifier head is kept when the
    /// labels are the same, reordered when they come in another order, and drawn afresh from
    /// --seed otherwise (docs/guide.md, "Fine-tuning and several corpora").
    #[arg(long, value_name = "RUN")]
    pub init: Option<PathBuf>,
    /// Parameters that training leaves as they are: `none`, or `cnn` (the three conv stages
    /// with their BatchNorm: weights, biases and running statistics). Needs --init.
    #[arg(long, value_enum, default_value_t = Freeze::None)]
    pub freeze: Freeze,
    /// Learning rate of every parameter but the classifier head, as a multiple of --lr
    /// (> 0, at most 1).
    #[arg(long, default_value_t = 1.0, allow_negative_numbers = true)]
    pub backbone_lr_scale: f64,
}

/// `--freeze`: which parameters training leaves as they are.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Freeze {
    /// Every parameter trains.
    #[default]
    None,
    /// The conv stages and their BatchNorm (affine parameters and running statistics).
    Cnn,
}

impl TrainOpts {
    /// Checks every numeric option against its range (docs/guide.md, "Options and their
    /// ranges"), before any work starts. One row per option: a new option adds its row here.
    pub fn validate(&self) -> Result<()> {
        use Limit::{Excl, Incl};
        let n = |v: usize| v as f64;
        let opt = |v: Option<usize>| v.map(|v| v as f64);
        let (rate_lo, rate_hi) = SAMPLE_RATE_RANGE;
        let checks: &[(&str, Option<f64>, Limit, Limit)] = &[
            (
                "sample-rate",
                self.sample_rate.map(f64::from),
                Incl(rate_lo.into()),
                Incl(rate_hi.into()),
            ),
            (
                "n-mels",
                Some(n(self.n_mels)),
                Incl(8.0),
                Incl(n(MAX_N_MELS)),
            ),
            (
                "kernel-size",
                Some(n(self.kernel_size)),
                Incl(1.0),
                Incl(n(MAX_KERNEL_SIZE)),
            ),
            (
                "max-seconds",
                Some(self.max_seconds),
                Excl(0.0),
                Incl(MAX_SECONDS),
            ),
            ("fc-size", opt(self.fc_size), Incl(1.0), Incl(4096.0)),
            (
                "hidden-size",
                opt(self.hidden_size),
                Incl(1.0),
                Incl(2048.0),
            ),
            ("dropout", Some(self.dropout.into()), Incl(0.0), Excl(1.0)),
            ("epochs", opt(self.epochs), Incl(1.0), Incl(100_000.0)),
            ("batch-size", opt(self.batch_size), Incl(1.0), Incl(4096.0)),
            ("lr", self.lr, Excl(0.0), Incl(10.0)),
            (
                "weight-decay",
                Some(self.weight_decay),
                Incl(0.0),
                Excl(1.0),
            ),
            (
                "plateau-factor",
                Some(self.plateau_factor),
                Excl(0.0),
                Excl(1.0),
            ),
            (
                "plateau-patience",
                Some(n(self.plateau_patience)),
                Incl(0.0),
                Incl(10_000.0),
            ),
            (
                "early-stop",
                Some(n(self.early_stop)),
                Incl(1.0),
                Incl(100_000.0),
            ),
            ("clip-grad", Some(self.clip_grad), Incl(0.0), Incl(1e6)),
            (
                "label-smoothing",
                Some(self.label_smoothing),
                Incl(0.0),
                Excl(1.0),
            ),
            (
                "noise-prob",
                Some(self.noise_prob.into()),
                Incl(0.0),
                Incl(1.0),
            ),
            (
                "snr-min",
                Some(self.snr_min.into()),
                Incl(-30.0),
                Incl(100.0),
            ),
            (
                "snr-max",
                Some(self.snr_max.into()),
                Incl(-30.0),
                Incl(100.0),
            ),
            (
                "freq-masks",
                Some(n(self.freq_masks)),
                Incl(0.0),
                Incl(100.0),
            ),
            (
                "freq-mask-max",
                Some(n(self.freq_mask_max)),
                Incl(0.0),
                Incl(n(self.n_mels)),
            ),
            (
                "time-masks",
                Some(n(self.time_masks)),
                Incl(0.0),
                Incl(100.0),
            ),
            (
                "time-mask-frac",
                Some(self.time_mask_frac.into()),
                Incl(0.0),
                Incl(1.0),
            ),
            ("ema", self.ema, Excl(0.0), Excl(1.0)),
            (
                "backbone-lr-scale",
                Some(self.backbone_lr_scale),
                Excl(0.0),
                Incl(1.0),
            ),
            (
                "mixup",
                Some(self.mixup),
                Incl(0.0),
                Incl(crate::train::mixup::MAX_ALPHA),
            ),
        ];
        for &(name, value, lo, hi) in checks {
            if let Some(v) = value {
                check_range(name, v, lo, hi)?;
            }
        }
        if !self.n_mels.is_multiple_of(8) {
            bail!(
                "--n-mels {}: must be a multiple of 8 (three 2×2 poolings halve it three times)",
                self.n_mels
            );
        }
        if self.kernel_size.is_multiple_of(2) {
            bail!(
                "--kernel-size {}: must be odd (\"same\" padding needs a centre)",
                self.kernel_size
            );
        }
        if let Some(c) = &self.channels {
            if c.len() != 3 {
                bail!("--channels takes three values, got {}", c.len());
            }
            for &v in c {
                check_range("channels", n(v), Incl(1.0), Incl(1024.0))?;
            }
        }
        if self.label_map.is_some() && self.data.is_empty() {
            bail!("--label-map needs --data: the demo corpus has its own labels");
        }
        for (i, d) in self.data.iter().enumerate() {
            if self.data[..i].contains(d) {
                bail!("--data {}: given twice", d.display());
            }
        }
        if self.freeze == Freeze::Cnn && self.init.is_none() {
            bail!("--freeze cnn needs --init RUN: a frozen CNN keeps its random initialisation");
        }
        if let Some(f) = &self.speed {
            let (lo, hi) = crate::train::speed::FACTOR_RANGE;
            if f.is_empty() || f.len() > crate::train::speed::MAX_FACTORS {
                bail!(
                    "--speed takes 1 to {} factors, got {}",
                    crate::train::speed::MAX_FACTORS,
                    f.len()
                );
            }
            for &v in f {
                check_range("speed", v, Incl(lo), Incl(hi))?;
            }
        }
        if self.snr_min > self.snr_max {
            bail!(
                "--snr-min {} is above --snr-max {}: the SNR range must not be upside down",
                self.snr_min,
                self.snr_max
            );
        }
        Ok(())
    }

    /// The options given on the command line that differ from their defaults, as flag names
    /// (`--lr`), leaving out those in `allowed`: what `train --resume` would silently ignore.
    pub fn given_flags(&self, allowed: &[&str]) -> Vec<String> {
        use clap::Parser;
        #[derive(Parser)]
        struct Defaults {
            #[command(flatten)]
            opts: TrainOpts,
        }
        let defaults = Defaults::parse_from(["defaults"]).opts;
        let (Ok(serde_json::Value::Object(given)), Ok(serde_json::Value::Object(default))) =
            (serde_json::to_value(self), serde_json::to_value(&defaults))
        else {
            return Vec::new();
        };
        given
            .iter()
            .filter(|(k, v)| default.get(*k) != Some(*v))
            .map(|(k, _)| format!("--{}", k.replace('_', "-")))
            .filter(|f| !allowed.contains(&f.as_str()))
            .collect()
    }

    /// The corpora as config.json names them: the paths as given, or `demo`.
    pub fn data_names(&self) -> Vec<String> {
        if self.data.is_empty() {
            vec!["demo".to_string()]
        } else {
            self.data.iter().map(|p| p.display().to_string()).collect()
        }
    }

    pub fn mel(&self) -> MelConfig {
        MelConfig {
            n_mels: self.n_mels,
            ..MelConfig::default()
        }
    }

    pub fn augment(&self) -> AugmentConfig {
        // The demo corpus already varies speakers and background noise; augmentation only
        // slowed its 20-epoch run (docs/results.md, "Demo preset choice").
        if self.no_augment || (self.on_demo() && !self.augment) {
            return AugmentConfig::none();
        }
        AugmentConfig {
            noise_prob: self.noise_prob,
            snr_min_db: self.snr_min,
            snr_max_db: self.snr_max,
            freq_masks: self.freq_masks,
            freq_mask_max: self.freq_mask_max,
            time_masks: self.time_masks,
            time_mask_max_frac: self.time_mask_frac,
        }
    }

    pub fn model(&self, classes: usize) -> Result<ModelConfig> {
        let d = ModelConfig::default();
        let channels = match self.channels.as_deref() {
            None => d.channels,
            Some(&[a, b, c]) => [a, b, c],
            Some(v) => bail!("--channels takes three values, got {}", v.len()),
        };
        let cfg = ModelConfig {
            n_mels: self.n_mels,
            kernel: self.kernel_size,
            channels,
            fc: self.fc_size.unwrap_or(d.fc),
            hidden: self.hidden_size.unwrap_or(d.hidden),
            classes,
            dropout: self.dropout,
            batchnorm: !self.no_batchnorm,
            input_norm: self.norm,
            ..d
        };
        cfg.validate()?;
        Ok(cfg)
    }

    /// The demo corpus (no --data) is small and synthetic: it trains with a larger step,
    /// smaller batches, a cosine schedule and no augmentation, so that the first run finishes
    /// in minutes on two cores (each choice measured: docs/results.md, "Demo preset choice").
    fn on_demo(&self) -> bool {
        self.data.is_empty()
    }

    /// The recipe's defaults for this corpus (`train::recipe`).
    pub fn recipe_defaults(&self) -> RecipeDefaults {
        recipe::defaults(self.recipe, self.on_demo())
    }

    pub fn epochs(&self) -> usize {
        self.epochs.unwrap_or(self.recipe_defaults().epochs)
    }

    pub fn batch_size(&self) -> usize {
        self.batch_size.unwrap_or(self.recipe_defaults().batch_size)
    }

    pub fn schedule(&self) -> crate::train::schedule::Schedule {
        self.schedule.unwrap_or(self.recipe_defaults().schedule)
    }

    pub fn lr(&self) -> f64 {
        self.lr.unwrap_or(self.recipe_defaults().lr)
    }

    pub fn fit(&self, seed: u64) -> FitConfig {
        FitConfig {
            epochs: self.epochs(),
            batch_size: self.batch_size(),
            lr: self.lr(),
            plateau_factor: self.plateau_factor,
            plateau_patience: self.plateau_patience,
            schedule: self.schedule(),
            early_stop_patience: self.recipe_defaults().early_stop.unwrap_or(self.early_stop),
            augment: self.augment(),
            max_seconds: Some(self.max_seconds),
            seed,
            ema: self.ema,
            mixup: (self.mixup > 0.0).then_some(self.mixup),
            speed: self.speed.clone(),
        }
    }

    /// Optimizer settings; class weights from the training labels when asked.
    pub fn optim(&self, train_labels: &[usize], classes: usize) -> OptimConfig {
        let class_weights = self.class_weights.then(|| {
            let mut counts = vec![0usize; classes];
            for &l in train_labels {
                counts[l] += 1;
            }
            let n = train_labels.len() as f32;
            counts
                .iter()
                .map(|&c| {
                    if c == 0 {
                        0.0
                    } else {
                        n / (classes as f32 * c as f32)
                    }
                })
                .collect()
        });
        OptimConfig {
            lr: self.lr(),
            weight_decay: self.weight_decay,
            decoupled_weight_decay: self.adamw,
            clip_grad_norm: self.clip_grad,
            label_smoothing: self.label_smoothing,
            class_weights,
            freeze_cnn: self.freeze == Freeze::Cnn,
            backbone_lr_scale: self.backbone_lr_scale,
        }
    }
}

/// `TrainOpts` parsed from command-line flags as `train` would, or clap's error (for the unit
/// tests of train/).
#[cfg(test)]
pub(crate) fn try_parse_opts(args: &[&str]) -> Result<TrainOpts, clap::Error> {
    #[derive(clap::Parser)]
    struct Cli {
        #[command(flatten)]
        opts: TrainOpts,
    }
    <Cli as clap::Parser>::try_parse_from(std::iter::once("t").chain(args.iter().copied()))
        .map(|c| c.opts)
}

/// [`try_parse_opts`] of flags that must parse.
#[cfg(test)]
pub(crate) fn parse_opts(args: &[&str]) -> TrainOpts {
    try_parse_opts(args).unwrap()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::train::schedule::Schedule;

    fn opts(args: &[&str]) -> TrainOpts {
        parse_opts(args)
    }

    #[test]
    fn demo_preset_and_paper_defaults() {
        let demo = opts(&[]);
        assert_eq!(
            (demo.epochs(), demo.batch_size(), demo.lr()),
            (20, 16, 1e-3)
        );
        assert_eq!(demo.schedule(), Schedule::Cosine);
        assert_eq!(demo.augment(), AugmentConfig::none());

        let paper = opts(&["--data", "x"]);
        assert_eq!(
            (paper.epochs(), paper.batch_size(), paper.lr()),
            (100, 32, 1e-4)
        );
        assert_eq!(paper.schedule(), Schedule::Plateau);
        let a = paper.augment();
        assert_eq!((a.noise_prob, a.freq_masks, a.time_masks), (0.5, 2, 2));

        // every preset choice can be overridden either way
        let demo_aug = opts(&["--augment", "--schedule", "plateau"]);
        assert_ne!(demo_aug.augment(), AugmentConfig::none());
        assert_eq!(demo_aug.schedule(), Schedule::Plateau);
        let paper_off = opts(&["--data", "x", "--no-augment", "--schedule", "cosine"]);
        assert_eq!(paper_off.augment(), AugmentConfig::none());
        assert_eq!(paper_off.schedule(), Schedule::Cosine);
        assert!(try_parse_opts(&["--augment", "--no-augment"]).is_err());
    }

    #[test]
    fn defaults_pass_validation_and_ranges_name_the_bound() {
        opts(&[]).validate().unwrap();
        opts(&["--data", "x"]).validate().unwrap();
        let e = |args: &[&str]| format!("{:#}", opts(args).validate().unwrap_err());
        assert_eq!(
            e(&["--lr", "-1"]),
            "--lr -1: must be > 0 (range: > 0 and ≤ 10)"
        );
        assert_eq!(
            e(&["--lr", "20"]),
            "--lr 20: must be ≤ 10 (range: > 0 and ≤ 10)"
        );
        assert_eq!(
            e(&["--dropout", "nan"]),
            "--dropout NaN: must be a finite number ≥ 0 and < 1"
        );
        // Boundaries: included ends pass, excluded ones fail.
        opts(&["--noise-prob", "1", "--dropout", "0", "--clip-grad", "0"])
            .validate()
            .unwrap();
        assert!(opts(&["--plateau-factor", "0"]).validate().is_err());
    }

    #[test]
    fn mixup_and_speed_reach_the_fit_config_and_old_configs_load_with_them_off() {
        let on = opts(&["--mixup", "0.4", "--speed", "0.9,1.1"]);
        on.validate().unwrap();
        let fit = on.fit(3);
        assert_eq!(
            (fit.mixup, fit.speed.clone()),
            (Some(0.4), Some(vec![0.9, 1.1]))
        );
        // 0 is off; off writes no field, and a config.json without the fields loads as off
        let off = opts(&["--mixup", "0"]).fit(3);
        assert_eq!((off.mixup, off.speed.clone()), (None, None));
        let json = serde_json::to_value(&off).unwrap();
        assert!(json.get("mixup").is_none() && json.get("speed").is_none());
        let mut old = serde_json::to_value(&fit).unwrap();
        let obj = old.as_object_mut().unwrap();
        obj.remove("mixup");
        obj.remove("speed");
        let loaded: FitConfig = serde_json::from_value(old).unwrap();
        assert_eq!((loaded.mixup, loaded.speed), (None, None));
        // the clap parser splits the list; validate counts and bounds it
        let e = |args: &[&str]| format!("{:#}", opts(args).validate().unwrap_err());
        assert_eq!(
            e(&["--speed", "0.9,2.5"]),
            "--speed 2.5: must be ≤ 2 (range: ≥ 0.5 and ≤ 2)"
        );
        assert_eq!(
            e(&["--mixup", "-1"]),
            "--mixup -1: must be ≥ 0 (range: ≥ 0 and ≤ 10)"
        );
    }

    #[test]
    fn given_flags_lists_what_differs_from_the_defaults() {
        let o = opts(&["--lr", "0.5", "--epochs", "3", "--no-augment"]);
        assert_eq!(o.given_flags(&["--epochs"]), vec!["--lr", "--no-augment"]);
        assert!(opts(&["--epochs", "3"])
            .given_flags(&["--epochs"])
            .is_empty());
    }
}
