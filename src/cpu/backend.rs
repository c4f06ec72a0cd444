//! The CPU reference as a training backend: [`crate::backend::Backend`] over [`CpuModel`],
//! Adam and gradient clipping.
//!
//! Layer: cpu. May use `backend`, `model` and the rest of `cpu`; never `train`, `engine` or
//! `cli`.

use crate::backend::batch::Batch;
use crate::backend::mixup::SoftTargets;
use crate::backend::{ema_decay, ema_update, Backend, LrGroup, OptimConfig, StepStats, TrainState};
use crate::cpu::{clip_grad_norm, cross_entropy, cross_entropy_soft, Adam, CpuModel, Input, Mode};
use crate::model::ModelConfig;
use anyhow::{bail, Result};

pub struct CpuBackend {
    pub model: CpuModel<f32>,
    pub adam: Adam<f32>,
    pub optim: OptimConfig,
    /// Seed of the dropout masks.
    pub seed: u64,
    /// `--ema`: the decay, and the average once started.
    ema_decay: Option<f64>,
    ema: Option<Vec<f32>>,
    /// `--freeze`, `--backbone-lr-scale` ([`OptimConfig::lr_groups`]; empty: one group).
    lr_groups: Vec<LrGroup>,
}

impl CpuBackend {
    pub fn new(cfg: &ModelConfig, optim: &OptimConfig, seed: u64) -> Self {
        let model = CpuModel::<f32>::new(cfg.clone(), seed);
        let mut adam = Adam::new(
            model.params.len(),
            optim.lr as f32,
            optim.weight_decay as f32,
        );
        adam.decoupled = optim.decoupled_weight_decay;
        let lr_groups = optim.lr_groups(cfg);
        Self {
            model,
            adam,
            optim: optim.clone(),
            seed,
            ema_decay: None,
            ema: None,
            lr_groups,
        }
    }

    fn input<'a>(batch: &'a Batch) -> Input<'a, f32> {
        Input {
            x: &batch.x,
            batch: batch.batch,
            t_max: batch.t_max,
            lengths: &batch.lengths,
        }
    }
}

impl Backend for CpuBackend {
    fn train_step(&mut self, batch: &Batch, step: u32, lr: f64) -> Result<StepStats> {
        self.model.zero_grads();
        // `--freeze cnn`: the running statistics the step's forward updates are put back
        let frozen_stats = self.optim.freeze_cnn.then(|| self.model.buffers.clone());
        let fwd = self.model.forward(
            &Self::input(batch),
            Mode::Train {
                seed: self.seed,
                step,
            },
        );
        let classes = self.model.cfg.classes;
        let weights = self.optim.class_weights.as_deref();
        let (loss, dlogits, correct) = match &batch.mix {
            None => cross_entropy(
                &fwd.logits,
                &batch.labels,
                classes,
                weights,
                self.optim.label_smoothing as f32,
            ),
            // --mixup: soft targets (backend::mixup)
            Some(mix) => {
                let targets = SoftTargets::new(
                    &batch.labels,
                    mix,
                    classes,
                    self.optim.label_smoothing,
                    weights,
                );
                cross_entropy_soft(&fwd.logits, &targets, classes, weights)
            }
        };
        self.model.backward(&fwd, &dlogits);
        if let Some(b) = frozen_stats {
            self.model.buffers = b;
        }
        for g in self.lr_groups.iter().filter(|g| g.scale == 0.0) {
            // × 0 as the device's `scale` kernel: frozen gradients leave the clip norm
            for v in &mut self.model.grads[g.range.clone()] {
                *v *= 0.0;
            }
        }
        if self.optim.clip_grad_norm > 0.0 {
            clip_grad_norm(&mut self.model.grads, self.optim.clip_grad_norm as f32);
        }
        self.adam.lr = lr as f32;
        if self.lr_groups.is_empty() {
            self.adam.step(&mut self.model.params, &self.model.grads);
        } else {
            let groups: Vec<_> = self
                .lr_groups
                .iter()
                .map(|g| (g.range.clone(), g.scale))
                .collect();
            self.adam
                .step_groups(&mut self.model.params, &self.model.grads, &groups);
        }
        if let (Some(d), Some(ema)) = (self.ema_decay, self.ema.as_mut()) {
            ema_update(ema, &self.model.params, ema_decay(d, step));
        }
        Ok(StepStats {
            loss: loss as f64,
            correct,
        })
    }

    fn eval_logits(&mut self, batch: &Batch) -> Result<Vec<f32>> {
        self.model.infer(&Self::input(batch))
    }

    fn classes(&self) -> usize {
        self.model.cfg.classes
    }

    fn state(&self) -> Result<TrainState> {
        Ok(TrainState {
            params: self.model.params.clone(),
            buffers: self.model.buffers.clone(),
            adam_m: self.adam.m.clone(),
            adam_v: self.adam.v.clone(),
            adam_t: self.adam.t,
            ema: self.ema.clone().unwrap_or_default(),
        })
    }

    fn set_state(&mut self, s: &TrainState) -> Result<()> {
        if s.params.len() != self.model.params.len() || s.buffers.len() != self.model.buffers.len()
        {
            bail!(
                "saved state has {} parameters and {} buffers; this model has {} and {}",
                s.params.len(),
                s.buffers.len(),
                self.model.params.len(),
                self.model.buffers.len()
            );
        }
        self.model.params.copy_from_slice(&s.params);
        self.model.buffers.copy_from_slice(&s.buffers);
        if s.adam_m.len() == s.params.len() && s.adam_v.len() == s.params.len() {
            self.adam.m.copy_from_slice(&s.adam_m);
            self.adam.v.copy_from_slice(&s.adam_v);
            self.adam.t = s.adam_t;
        }
        if !s.ema.is_empty() {
            if s.ema.len() != s.params.len() {
                bail!(
                    "saved state has an EMA of {} values for {} parameters",
                    s.ema.len(),
                    s.params.len()
                );
            }
            self.ema = Some(s.ema.clone());
        }
        Ok(())
    }

    fn enable_ema(&mut self, decay: f64) -> Result<()> {
        self.ema_decay = Some(decay);
        if self.ema.is_none() {
            self.ema = Some(self.model.params.clone());
        }
        Ok(())
    }

    fn step_memory_bytes(&self, batch: usize, t_max: usize) -> u64 {
        let threads = rayon::current_num_threads();
        crate::cpu::memory::train_step_bytes(&self.model.cfg, batch, t_max, threads)
    }

    fn swap_ema(&mut self) -> Result<()> {
        let Some(ema) = self.ema.as_mut() else {
            bail!("no EMA of the weights is kept (--ema not given)");
        };
        std::mem::swap(ema, &mut self.model.params);
        Ok(())
    }
}
