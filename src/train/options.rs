//! Corpus, features, model and training options shared by every command that trains
//! (`train`, `cv`): the clap flags, their presets (the paper's recipe on a real corpus, a short
//! one on the demo corpus) and the configs they turn into.

use crate::audio::corpus::CorpusFormat;
use crate::features::augment::AugmentConfig;
use crate::features::MelConfig;
use crate::model::ModelConfig;
use crate::train::backend::OptimConfig;
use crate::train::fit::FitConfig;
use crate::train::recipe::{self, Recipe, RecipeDefaults};
use anyhow::{bail, Result};
use clap::Args;
use std::path::PathBuf;

/// Corpus, features, model and training options shared by `train` and `cv`.
#[derive(Debug, Args, Clone)]
pub struct TrainOpts {
    /// Corpus folder (or CSV manifest). Without it: the built-in demo corpus.
    #[arg(long)]
    pub data: Option<PathBuf>,
    /// Corpus layout.
    #[arg(long, value_enum, default_value_t = CorpusFormat::Auto)]
    pub format: CorpusFormat,
    /// Regex with named groups `label` (and optionally `speaker`) over paths relative to --data.
    #[arg(long)]
    pub label_regex: Option<String>,
    /// Resample audio to this rate (default: the corpus's native rate).
    #[arg(long)]
    pub sample_rate: Option<u32>,
    /// Mel bands.
    #[arg(long, default_value_t = 128)]
    pub n_mels: usize,
    /// Convolution kernel size (3, 5, 7, 9, 11 in the paper).
    #[arg(long, default_value_t = 7)]
    pub kernel_size: usize,
    /// Leave out BatchNorm after each convolution.
    #[arg(long)]
    pub no_batchnorm: bool,
    /// Advanced (tests, experiments): channels of the three conv stages, e.g. 4,8,8
    /// [default: 32,64,128 as the paper].
    #[arg(long, hide = true, value_delimiter = ',')]
    pub channels: Option<Vec<usize>>,
    /// Advanced: width of the per-frame FC layer [default: 128].
    #[arg(long, hide = true)]
    pub fc_size: Option<usize>,
    /// Advanced: LSTM hidden size per direction [default: 64].
    #[arg(long, hide = true)]
    pub hidden_size: Option<usize>,
    /// Dropout probability (conv stages, FC, between LSTM layers).
    #[arg(long, default_value_t = 0.3)]
    pub dropout: f32,
    /// Defaults for the flags below that are not given: `paper` (the paper's recipe; the
    /// short preset on the demo corpus) or `strong` (cosine to zero from a 10× higher peak,
    /// label smoothing 0.1, 40 epochs, no early stopping; README, "A stronger recipe").
    #[arg(long, value_enum, default_value_t = Recipe::Paper)]
    pub recipe: Recipe,
    /// Maximum number of epochs [default: 100; 20 on the demo corpus]. With --resume, a
    /// larger value extends the run.
    #[arg(long)]
    pub epochs: Option<usize>,
    /// Clips per batch [default: 32, as the paper; 16 on the demo corpus].
    #[arg(long)]
    pub batch_size: Option<usize>,
    /// Adam learning rate [default: 1e-4, as the paper; 1e-3 on the demo corpus].
    #[arg(long)]
    pub lr: Option<f64>,
    /// Adam weight decay (L2 added to the gradient, as torch.optim.Adam).
    #[arg(long, default_value_t = 1e-5)]
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
    #[arg(long, default_value_t = 0.5)]
    pub plateau_factor: f64,
    #[arg(long, default_value_t = 5)]
    pub plateau_patience: usize,
    /// Stop after this many epochs without a better validation loss.
    #[arg(long, default_value_t = 10)]
    pub early_stop: usize,
    /// Clip the global gradient norm to this value (0: off).
    #[arg(long, default_value_t = 0.0)]
    pub clip_grad: f64,
    #[arg(long, default_value_t = 0.0)]
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
    #[arg(long, default_value_t = 0.5)]
    pub noise_prob: f32,
    #[arg(long, default_value_t = 10.0)]
    pub snr_min: f32,
    #[arg(long, default_value_t = 30.0)]
    pub snr_max: f32,
    /// SpecAugment: number and widest width of frequency masks (bins) and time masks
    /// (fraction of the clip's frames).
    #[arg(long, default_value_t = 2)]
    pub freq_masks: usize,
    #[arg(long, default_value_t = 15)]
    pub freq_mask_max: usize,
    #[arg(long, default_value_t = 2)]
    pub time_masks: usize,
    #[arg(long, default_value_t = 0.1)]
    pub time_mask_frac: f32,
}

impl TrainOpts {
    pub fn mel(&self) -> MelConfig {
        MelConfig {
            n_mels: self.n_mels,
            ..MelConfig::default()
        }
    }

    pub fn augment(&self) -> AugmentConfig {
        // The demo corpus already varies speakers and background noise; augmentation only
        // slowed its 20-epoch run (README, "Quick start").
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
            ..d
        };
        cfg.validate()?;
        Ok(cfg)
    }

    /// The demo corpus (no --data) is small and synthetic: it trains with a larger step,
    /// smaller batches, a cosine schedule and no augmentation, so that the first run finishes
    /// in minutes on two cores (each choice measured: README, "Quick start").
    fn on_demo(&self) -> bool {
        self.data.is_none()
    }

    /// The recipe's defaults for this corpus (`train::recipe`).
    pub fn recipe_defaults(&self) -> RecipeDefaults {
        recipe::defaults(self.recipe, self.on_demo())
    }

    pub fn epochs(&self) -> usize {
        self.epochs.unwrap_or(self.recipe_defaults().epochs)
    }

    pub fn batch_size(&self) -> usize {
        self.batch_size
            .unwrap_or(self.recipe_defaults().batch_size)
            .max(1)
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
            seed,
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
            // 0 is the flag's default: the recipe's value applies.
            label_smoothing: if self.label_smoothing == 0.0 {
                self.recipe_defaults().label_smoothing
            } else {
                self.label_smoothing
            },
            class_weights,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::train::schedule::Schedule;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        opts: TrainOpts,
    }

    fn opts(args: &[&str]) -> TrainOpts {
        Cli::try_parse_from(std::iter::once("t").chain(args.iter().copied()))
            .unwrap()
            .opts
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
        assert!(Cli::try_parse_from(["t", "--augment", "--no-augment"]).is_err());
    }
}
