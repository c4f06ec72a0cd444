//! Every buffer of the composed forward and backward for one (batch, t_max) shape
//! ([`CnnWorkspace`]) and the options of those passes ([`CnnOptions`]). Uses the device,
//! [`crate::backend::memory`] (the scratch sizes) and the sibling op files' types.

use super::dropout::Dropout;
use crate::backend::memory::{bn_scratch_len, fc_scratch_len, Dims4};
use crate::cpu::conv::ConvShape;
use crate::device::{Device, DeviceBuffer};
use crate::model::ModelConfig;
use anyhow::{ensure, Result};

/// Options of the composed forward/backward.
#[derive(Clone, Copy, Debug)]
pub struct CnnOptions {
    /// Most elements of one im2col matrix (clips are processed in chunks that fit).
    pub max_col_elems: usize,
    /// In eval mode with BatchNorm, copy the running statistics into the workspace (one copy
    /// launch per statistic and stage) so that [`super::cnn_backward`] can differentiate the forward
    /// even if a training step changes them in between. Off: the forward reads the running
    /// statistics in place and such a backward is an error (`DeviceModel` never differentiates
    /// an eval forward, so it turns this off).
    pub eval_stats_snapshot: bool,
}
impl Default for CnnOptions {
    fn default() -> Self {
        // 256 Mi floats = 1 GiB of column matrix (plus as much again in backward).
        CnnOptions {
            max_col_elems: 1 << 28,
            eval_stats_snapshot: true,
        }
    }
}

/// Saved activations of one conv stage, and its backward buffers.
pub struct StageWork {
    /// conv input `[B][cin][M][T]` (stage 0: the model input, filled by the caller; stage
    /// s > 0: the previous stage's pooled output)
    pub input: DeviceBuffer<f32>,
    /// conv output (pre-BN) `[B][cout][M][T]`
    pub conv: DeviceBuffer<f32>,
    /// statistics used (batch in training, a copy of the running ones in eval when
    /// [`CnnOptions::eval_stats_snapshot`]), `[cout]`; None without BN
    pub mean: Option<DeviceBuffer<f32>>,
    pub var: Option<DeviceBuffer<f32>>,
    /// ReLU output `[B][cout][M][T]`
    pub relu: DeviceBuffer<f32>,
    /// pool winners 0..3 `[B][cout][M/2][T/2]`
    pub arg: DeviceBuffer<i32>,
    pub shape: ConvShape,
    /// backward: gradient of the pool output `[B][cout][M/2][T/2]`, of the ReLU output and of
    /// the conv output `[B][cout][M][T]`
    pub(super) dpool: DeviceBuffer<f32>,
    pub(super) drelu: DeviceBuffer<f32>,
    pub(super) dconv: DeviceBuffer<f32>,
    /// BN scratch of [`bn_scratch_len`] (the backward's sums, the reductions' partials);
    /// None without BN
    pub(super) bn_sums: Option<DeviceBuffer<f32>>,
}

/// Every buffer of the composed forward and backward for one (batch, t_max) shape, created
/// once by [`CnnWorkspace::new`] and overwritten by each [`super::cnn_forward`] / [`super::cnn_backward`]
/// (which allocate nothing, except the shared [`super::ConvScratch`] growing for a larger shape).
/// After [`super::cnn_forward`] it holds the forward's results.
pub struct CnnWorkspace {
    pub batch: usize,
    pub t_max: usize,
    /// Valid lengths after 0..=3 poolings (host) and the same on the device, `[B]` each.
    pub lens: [Vec<usize>; 4],
    pub lens_dev: Vec<DeviceBuffer<i32>>,
    pub train: bool,
    /// The forward was in eval mode without [`CnnOptions::eval_stats_snapshot`]: the BN
    /// statistics it used are not in the workspace, so it has no backward.
    pub(super) stats_missing: bool,
    /// (seed, step, p) when dropout is active.
    pub drop: Option<(u64, u32, f32)>,
    pub stages: Vec<StageWork>,
    /// stage-3 output `[B][C3][M3][T3]`
    pub stage3: DeviceBuffer<f32>,
    /// `[B][T3][fc_in]`
    pub frames: DeviceBuffer<f32>,
    /// FC output after ReLU, before dropout `[B·T3][fc]`
    pub fc_relu: DeviceBuffer<f32>,
    /// FC output after dropout `[B][T3][fc]`: the LSTM input.
    pub out: DeviceBuffer<f32>,
    /// backward: gradient of `frames` `[B][T3][fc_in]` and the FC scratch dz `[B·T3][fc]`
    pub(super) dframes: DeviceBuffer<f32>,
    pub(super) fc_dz: DeviceBuffer<f32>,
}

impl CnnWorkspace {
    /// Buffers for batches of `batch` clips padded to `t_max` frames (t_max ≥ 8).
    pub fn new(dev: &Device, cfg: &ModelConfig, batch: usize, t_max: usize) -> Result<Self> {
        cfg.validate()?;
        ensure!(
            batch > 0 && t_max >= 8,
            "CNN workspace: batch {batch}, t_max {t_max} (need ≥ 1 clip, ≥ 8 frames)"
        );
        let lens_dev = (0..4)
            .map(|_| dev.alloc_uninit::<i32>(batch))
            .collect::<Result<Vec<_>>>()?;
        let (mut m, mut t) = (cfg.n_mels, t_max);
        let mut stages = Vec::with_capacity(3);
        let mut input = dev.alloc_uninit::<f32>(batch * cfg.n_mels * t_max)?;
        for s in 0..3 {
            let sh = ConvShape {
                batch,
                cin: cfg.stage_in(s),
                cout: cfg.channels[s],
                k: cfg.kernel,
                m,
                t,
            };
            let pooled = batch * sh.cout * (m / 2) * (t / 2);
            let d4 = Dims4 {
                batch,
                c: sh.cout,
                m,
                t,
            };
            let bn = |n: usize| -> Result<Option<DeviceBuffer<f32>>> {
                Ok(if cfg.batchnorm {
                    Some(dev.alloc_uninit(n)?)
                } else {
                    None
                })
            };
            stages.push(StageWork {
                input,
                conv: dev.alloc_uninit(sh.y_len())?,
                mean: bn(sh.cout)?,
                var: bn(sh.cout)?,
                relu: dev.alloc_uninit(sh.y_len())?,
                arg: dev.alloc_uninit(pooled)?,
                shape: sh,
                dpool: dev.alloc_uninit(pooled)?,
                drelu: dev.alloc_uninit(sh.y_len())?,
                dconv: dev.alloc_uninit(sh.y_len())?,
                // written by the reductions before each read (initcheck on sim checks that)
                bn_sums: if cfg.batchnorm {
                    Some(dev.alloc_uninit(bn_scratch_len(d4))?)
                } else {
                    None
                },
            });
            input = dev.alloc_uninit(pooled)?;
            m /= 2;
            t /= 2;
        }
        let rows = batch * t;
        let fin = cfg.fc_in();
        Ok(Self {
            batch,
            t_max,
            lens: Default::default(),
            lens_dev,
            train: false,
            stats_missing: false,
            drop: None,
            stages,
            stage3: input,
            frames: dev.alloc_uninit(rows * fin)?,
            fc_relu: dev.alloc_uninit(rows * cfg.fc)?,
            out: dev.alloc_uninit(rows * cfg.fc)?,
            dframes: dev.alloc_uninit(rows * fin)?,
            fc_dz: dev.alloc_uninit(fc_scratch_len(rows, cfg.fc))?,
        })
    }

    /// Bytes of device memory this workspace holds (sum of its buffers).
    pub fn bytes(&self) -> usize {
        let mut n = self.lens_dev.iter().map(|b| b.len()).sum::<usize>();
        for st in &self.stages {
            n += st.input.len() + st.conv.len() + st.relu.len() + st.arg.len();
            n += st.dpool.len() + st.drelu.len() + st.dconv.len();
            for b in [&st.mean, &st.var, &st.bn_sums].into_iter().flatten() {
                n += b.len();
            }
        }
        n += self.stage3.len() + self.frames.len() + self.fc_relu.len() + self.out.len();
        n += self.dframes.len() + self.fc_dz.len();
        4 * n
    }

    /// The model input `[B][n_mels][t_max]` that [`super::cnn_forward`] reads (fill it first, or
    /// replace it with a buffer of the same length).
    pub fn input_mut(&mut self) -> &mut DeviceBuffer<f32> {
        &mut self.stages[0].input
    }

    /// The conv shapes of the three stages.
    pub fn shapes(&self) -> [ConvShape; 3] {
        [
            self.stages[0].shape,
            self.stages[1].shape,
            self.stages[2].shape,
        ]
    }

    pub(super) fn dropout(&self, site: u64) -> Option<Dropout> {
        self.drop.map(|(seed, step, p)| Dropout {
            seed,
            step,
            site,
            p,
        })
    }
}
