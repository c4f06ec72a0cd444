//! The CNN's parameters on the device ([`CnnParams`], own buffers or views of the flat
//! parameter and gradient buffers) and BatchNorm's running statistics ([`BnRunning`]), in the
//! model's parameter layout. Uses the device and [`crate::model`].

use crate::device::{Device, DeviceBuffer, DeviceSlice, DeviceSliceMut};
use crate::model::{BufferLayout, ModelConfig, ParamLayout};
use anyhow::{ensure, Result};
use std::ops::Range;

/// The CNN + FC parameters (or their gradients), one tensor each, in the shapes of
/// MODEL_SPEC.md. `bn_w`/`bn_b` are empty without BatchNorm. `V` is how a tensor is held: an
/// own buffer ([`CnnParams::upload`], [`CnnParams::zeros`]), or a view of a flat
/// `ParamLayout`-order buffer ([`CnnParams::views`] to read parameters, [`CnnParams::views_mut`]
/// to write gradients), which is what the training step uses: no per-tensor copies.
pub struct CnnParams<V = DeviceBuffer<f32>> {
    pub conv_w: Vec<V>,
    pub conv_b: Vec<V>,
    pub bn_w: Vec<V>,
    pub bn_b: Vec<V>,
    pub fc_w: V,
    pub fc_b: V,
}

/// Names of the CNN + FC tensors in the flat parameter layout, in [`CnnParams`] field order
/// (conv w/b per stage, then BN w/b per stage, then fc).
pub fn cnn_names(cfg: &ModelConfig) -> Vec<String> {
    let mut v = Vec::new();
    for s in 1..=3 {
        v.push(format!("conv{s}.weight"));
        v.push(format!("conv{s}.bias"));
    }
    if cfg.batchnorm {
        for s in 1..=3 {
            v.push(format!("bn{s}.weight"));
            v.push(format!("bn{s}.bias"));
        }
    }
    v.push("fc.weight".into());
    v.push("fc.bias".into());
    v
}

/// Ranges of the CNN + FC tensors in the flat parameter layout, in [`CnnParams`] field order.
pub fn cnn_ranges(cfg: &ModelConfig) -> Vec<Range<usize>> {
    let layout = ParamLayout::new(cfg);
    cnn_names(cfg).iter().map(|n| layout.range(n)).collect()
}

impl CnnParams {
    /// Uploads the CNN + FC tensors of a flat parameter vector (`ParamLayout` order).
    pub fn upload(dev: &Device, cfg: &ModelConfig, params: &[f32]) -> Result<Self> {
        let layout = ParamLayout::new(cfg);
        ensure!(
            params.len() == layout.total(),
            "{} parameters, the model has {}",
            params.len(),
            layout.total()
        );
        let mut bufs = Vec::new();
        for n in cnn_names(cfg) {
            bufs.push(dev.htod(&params[layout.range(&n)])?);
        }
        Self::from_vec(cfg, bufs)
    }

    /// Zero-filled tensors (a gradient accumulator).
    pub fn zeros(dev: &Device, cfg: &ModelConfig) -> Result<Self> {
        let mut bufs = Vec::new();
        for r in cnn_ranges(cfg) {
            bufs.push(dev.alloc_zeros(r.len())?);
        }
        Self::from_vec(cfg, bufs)
    }

    /// Copies the tensors into their ranges of a flat parameter-layout vector.
    pub fn download_into(&self, dev: &Device, cfg: &ModelConfig, out: &mut [f32]) -> Result<()> {
        let layout = ParamLayout::new(cfg);
        ensure!(out.len() == layout.total(), "download_into: layout size");
        for (r, b) in cnn_ranges(cfg).into_iter().zip(self.in_order()) {
            out[r].copy_from_slice(&dev.dtoh(b)?);
        }
        Ok(())
    }
}

impl<'a> CnnParams<DeviceSlice<'a, f32>> {
    /// Views of the tensors at `ranges` ([`cnn_ranges`]) of the flat buffer `flat`.
    pub fn views(
        cfg: &ModelConfig,
        flat: &'a DeviceBuffer<f32>,
        ranges: &[Range<usize>],
    ) -> Result<Self> {
        let v = ranges
            .iter()
            .map(|r| flat.slice(r.clone()))
            .collect::<Result<Vec<_>>>()?;
        Self::from_vec(cfg, v)
    }
}

impl<'a> CnnParams<DeviceSliceMut<'a, f32>> {
    /// Mutable views of the tensors at `ranges` ([`cnn_ranges`]) of the flat buffer `flat`
    /// (e.g. the gradient buffer, which the backward then accumulates into).
    pub fn views_mut(
        cfg: &ModelConfig,
        flat: &'a mut DeviceBuffer<f32>,
        ranges: &[Range<usize>],
    ) -> Result<Self> {
        let v = flat.split_mut(ranges)?;
        Self::from_vec(cfg, v)
    }
}

impl<V> CnnParams<V> {
    fn from_vec(cfg: &ModelConfig, tensors: Vec<V>) -> Result<Self> {
        let want = 8 + if cfg.batchnorm { 6 } else { 0 };
        ensure!(
            tensors.len() == want,
            "{} CNN tensors, this model has {want}",
            tensors.len()
        );
        let mut it = tensors.into_iter();
        let mut next = || it.next().expect("length checked");
        let (mut conv_w, mut conv_b, mut bn_w, mut bn_b) =
            (Vec::new(), Vec::new(), Vec::new(), Vec::new());
        for _ in 0..3 {
            conv_w.push(next());
            conv_b.push(next());
        }
        if cfg.batchnorm {
            for _ in 0..3 {
                bn_w.push(next());
                bn_b.push(next());
            }
        }
        let fc_w = next();
        let fc_b = next();
        Ok(CnnParams {
            conv_w,
            conv_b,
            bn_w,
            bn_b,
            fc_w,
            fc_b,
        })
    }

    fn in_order(&self) -> Vec<&V> {
        let mut v = Vec::new();
        for s in 0..3 {
            v.push(&self.conv_w[s]);
            v.push(&self.conv_b[s]);
        }
        for s in 0..self.bn_w.len() {
            v.push(&self.bn_w[s]);
            v.push(&self.bn_b[s]);
        }
        v.push(&self.fc_w);
        v.push(&self.fc_b);
        v
    }
}

/// BatchNorm running statistics on the device (empty vectors without BatchNorm).
pub struct BnRunning {
    pub mean: Vec<DeviceBuffer<f32>>,
    pub var: Vec<DeviceBuffer<f32>>,
    /// num_batches_tracked of each stage (host counters).
    pub batches_tracked: Vec<f32>,
}

impl BnRunning {
    /// From a flat buffer vector (`BufferLayout` order).
    pub fn upload(dev: &Device, cfg: &ModelConfig, buffers: &[f32]) -> Result<Self> {
        let bl = BufferLayout::new(cfg);
        ensure!(buffers.len() == bl.total(), "buffer vector size");
        let mut r = BnRunning {
            mean: Vec::new(),
            var: Vec::new(),
            batches_tracked: Vec::new(),
        };
        if cfg.batchnorm {
            for s in 1..=3 {
                r.mean
                    .push(dev.htod(&buffers[bl.range(&format!("bn{s}.running_mean"))])?);
                r.var
                    .push(dev.htod(&buffers[bl.range(&format!("bn{s}.running_var"))])?);
                r.batches_tracked
                    .push(buffers[bl.range(&format!("bn{s}.num_batches_tracked")).start]);
            }
        }
        Ok(r)
    }

    /// Back into a flat buffer vector.
    pub fn download_into(&self, dev: &Device, cfg: &ModelConfig, out: &mut [f32]) -> Result<()> {
        let bl = BufferLayout::new(cfg);
        ensure!(out.len() == bl.total(), "buffer vector size");
        for s in 0..self.mean.len() {
            let n = s + 1;
            out[bl.range(&format!("bn{n}.running_mean"))]
                .copy_from_slice(&dev.dtoh(&self.mean[s])?);
            out[bl.range(&format!("bn{n}.running_var"))].copy_from_slice(&dev.dtoh(&self.var[s])?);
            out[bl.range(&format!("bn{n}.num_batches_tracked")).start] = self.batches_tracked[s];
        }
        Ok(())
    }
}
