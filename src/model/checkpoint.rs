//! safetensors checkpoints: one f32 tensor per parameter and running statistic under its
//! PyTorch `state_dict` name (num_batches_tracked as an I64 scalar, as torch writes it), the
//! [`ModelConfig`] as JSON under the metadata key [`CONFIG_KEY`], plus caller metadata.
//! Files are written to a temporary file in the target folder and renamed into place, so a
//! crash never leaves a half-written checkpoint.
//!
//! Layer: model (below train, engine and cli). May use the shared modules (`rng`, `isa`,
//! `cache`, `atomic_file`); nothing else of the crate.

use super::{BufferLayout, ModelConfig, ParamLayout};
use anyhow::{bail, Context, Result};
use safetensors::tensor::{Dtype, SafeTensors, TensorView};
use std::collections::{BTreeMap, HashMap};
use std::path::Path;

/// Metadata key holding the model configuration as JSON.
pub const CONFIG_KEY: &str = "ser_engine_model";

fn f32_bytes(v: &[f32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

/// Writes `params` and `buffers` (flat, in layout order) with `meta` to `path` atomically.
pub fn save_checkpoint(
    path: &Path,
    cfg: &ModelConfig,
    params: &[f32],
    buffers: &[f32],
    meta: &BTreeMap<String, String>,
) -> Result<()> {
    let pl = ParamLayout::new(cfg);
    let bl = BufferLayout::new(cfg);
    if params.len() != pl.total() || buffers.len() != bl.total() {
        bail!(
            "cannot save {}: got {} parameters and {} buffer values, the model has {} and {}",
            path.display(),
            params.len(),
            buffers.len(),
            pl.total(),
            bl.total()
        );
    }
    // (name, dtype, shape, bytes)
    let mut blobs: Vec<(String, Dtype, Vec<usize>, Vec<u8>)> = Vec::new();
    for e in &pl.entries {
        blobs.push((
            e.name.clone(),
            Dtype::F32,
            e.shape.clone(),
            f32_bytes(&params[e.offset..e.offset + e.len]),
        ));
    }
    for e in &bl.entries {
        let v = &buffers[e.offset..e.offset + e.len];
        if e.name.ends_with("num_batches_tracked") {
            let n = v[0].round() as i64;
            blobs.push((e.name.clone(), Dtype::I64, vec![], n.to_le_bytes().to_vec()));
        } else {
            blobs.push((e.name.clone(), Dtype::F32, e.shape.clone(), f32_bytes(v)));
        }
    }
    let mut views = Vec::with_capacity(blobs.len());
    for (name, dt, shape, bytes) in &blobs {
        views.push((name.as_str(), TensorView::new(*dt, shape.clone(), bytes)?));
    }
    let mut info: HashMap<String, String> = meta.clone().into_iter().collect();
    info.insert(CONFIG_KEY.to_string(), serde_json::to_string(cfg)?);
    let mut bytes = safetensors::tensor::serialize(views, Some(info))
        .with_context(|| format!("serialising checkpoint {}", path.display()))?;
    sort_header_keys(&mut bytes)
        .with_context(|| format!("serialising checkpoint {}", path.display()))?;
    crate::atomic_file::atomic_write(path, &bytes)
}

/// Rewrites a serialised safetensors header with its keys sorted. safetensors takes the
/// metadata as a HashMap and writes it in a different order each run; sorted, the same model
/// gives the same bytes. The compact JSON of the same entries has the same length in any
/// order, so the header keeps its size (and the tensor offsets stay valid).
fn sort_header_keys(bytes: &mut [u8]) -> Result<()> {
    type Header = BTreeMap<String, serde_json::Value>;
    let len = bytes
        .get(..8)
        .map(|b| u64::from_le_bytes(b.try_into().expect("8 bytes")) as usize)
        .context("no header")?;
    let end = 8usize
        .checked_add(len)
        .filter(|&e| e <= bytes.len())
        .context("bad header size")?;
    let mut header: Header = serde_json::from_slice(&bytes[8..end])?;
    if let Some(meta) = header.get_mut("__metadata__") {
        let sorted: BTreeMap<String, String> = serde_json::from_value(meta.take())?;
        *meta = serde_json::to_value(sorted)?;
    }
    let text = serde_json::to_vec(&header)?;
    if text.len() > len {
        bail!("the sorted header is longer than the original");
    }
    bytes[8..8 + text.len()].copy_from_slice(&text);
    bytes[8 + text.len()..end].fill(b' ');
    Ok(())
}

fn read_file(path: &Path) -> Result<Vec<u8>> {
    std::fs::read(path).with_context(|| format!("reading checkpoint {}", path.display()))
}

fn config_of(path: &Path, bytes: &[u8]) -> Result<(ModelConfig, HashMap<String, String>)> {
    let (_, md) = SafeTensors::read_metadata(bytes)
        .with_context(|| format!("{} is not a safetensors file", path.display()))?;
    let info = md.metadata().clone().unwrap_or_default();
    let json = info.get(CONFIG_KEY).with_context(|| {
        format!(
            "{} has no '{CONFIG_KEY}' metadata (not a ser-engine checkpoint)",
            path.display()
        )
    })?;
    let cfg: ModelConfig = serde_json::from_str(json)
        .with_context(|| format!("{}: bad model configuration in metadata", path.display()))?;
    cfg.validate()
        .with_context(|| format!("{}: invalid model configuration", path.display()))?;
    Ok((cfg, info))
}

/// The model configuration stored in a checkpoint.
pub fn read_checkpoint_config(path: &Path) -> Result<ModelConfig> {
    Ok(config_of(path, &read_file(path)?)?.0)
}

/// (parameters, buffers, caller metadata) of a checkpoint.
pub type Checkpoint = (Vec<f32>, Vec<f32>, BTreeMap<String, String>);

/// Reads (params, buffers, metadata without the config key); checks that the file was written
/// for `cfg` and that every tensor is present with the right shape.
pub fn load_checkpoint(path: &Path, cfg: &ModelConfig) -> Result<Checkpoint> {
    let bytes = read_file(path)?;
    let (file_cfg, info) = config_of(path, &bytes)?;
    if &file_cfg != cfg {
        bail!(
            "{} was saved for a different model: file has {:?}, expected {:?}",
            path.display(),
            file_cfg,
            cfg
        );
    }
    let st = SafeTensors::deserialize(&bytes)
        .with_context(|| format!("{} is not a valid safetensors file", path.display()))?;
    let read = |name: &str, shape: &[usize], out: &mut [f32]| -> Result<()> {
        let t = st
            .tensor(name)
            .map_err(|_| anyhow::anyhow!("{}: tensor '{name}' is missing", path.display()))?;
        if t.shape() != shape {
            bail!(
                "{}: tensor '{name}' has shape {:?}, expected {:?}",
                path.display(),
                t.shape(),
                shape
            );
        }
        match t.dtype() {
            Dtype::F32 => {
                for (o, c) in out.iter_mut().zip(t.data().chunks_exact(4)) {
                    *o = f32::from_le_bytes([c[0], c[1], c[2], c[3]]);
                }
            }
            Dtype::I64 if out.len() == 1 => {
                let d = t.data();
                let mut b = [0u8; 8];
                b.copy_from_slice(&d[..8]);
                out[0] = i64::from_le_bytes(b) as f32;
            }
            other => bail!(
                "{}: tensor '{name}' has dtype {other:?}, expected F32",
                path.display()
            ),
        }
        Ok(())
    };
    let pl = ParamLayout::new(cfg);
    let bl = BufferLayout::new(cfg);
    let mut params = vec![0f32; pl.total()];
    for e in &pl.entries {
        read(&e.name, &e.shape, &mut params[e.offset..e.offset + e.len])?;
    }
    let mut buffers = vec![0f32; bl.total()];
    for e in &bl.entries {
        read(&e.name, &e.shape, &mut buffers[e.offset..e.offset + e.len])?;
    }
    let meta = info
        .into_iter()
        .filter(|(k, _)| k != CONFIG_KEY)
        .collect::<BTreeMap<_, _>>();
    Ok((params, buffers, meta))
}

#[cfg(test)]
mod tests {
    use super::super::{init_buffers, init_params};
    use super::*;

    fn small() -> ModelConfig {
        ModelConfig {
            n_mels: 16,
            channels: [4, 8, 8],
            fc: 8,
            hidden: 6,
            classes: 3,
            ..Default::default()
        }
    }

    #[test]
    fn round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("m.safetensors");
        let cfg = small();
        let p = init_params(&cfg, 3);
        let mut b = init_buffers(&cfg);
        b[0] = 0.25;
        let nbt = BufferLayout::new(&cfg)
            .range("bn2.num_batches_tracked")
            .start;
        b[nbt] = 17.0;
        let mut meta = BTreeMap::new();
        meta.insert("epoch".to_string(), "4".to_string());
        save_checkpoint(&path, &cfg, &p, &b, &meta).unwrap();
        let (p2, b2, m2) = load_checkpoint(&path, &cfg).unwrap();
        assert_eq!(p, p2);
        assert_eq!(b, b2);
        assert_eq!(m2, meta);
        assert_eq!(read_checkpoint_config(&path).unwrap(), cfg);
        // Another config is refused, naming the file.
        let other = ModelConfig {
            kernel: 5,
            ..small()
        };
        let e = format!("{:#}", load_checkpoint(&path, &other).unwrap_err());
        assert!(
            e.contains("m.safetensors") && e.contains("different model"),
            "{e}"
        );
    }

    #[test]
    fn missing_file_is_named() {
        let e = format!(
            "{:#}",
            load_checkpoint(Path::new("/nonexistent/x.safetensors"), &small()).unwrap_err()
        );
        assert!(e.contains("/nonexistent/x.safetensors"), "{e}");
    }

    #[test]
    fn wrong_shape_and_missing_tensor_are_named() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = small();
        let info: HashMap<String, String> =
            [(CONFIG_KEY.to_string(), serde_json::to_string(&cfg).unwrap())].into();
        // A file whose conv1.weight has the wrong shape.
        let bad = vec![0u8; 4 * 3];
        let path = dir.path().join("bad.safetensors");
        let views = vec![(
            "conv1.weight",
            TensorView::new(Dtype::F32, vec![3], &bad).unwrap(),
        )];
        safetensors::tensor::serialize_to_file(views, Some(info.clone()), &path).unwrap();
        let e = format!("{:#}", load_checkpoint(&path, &cfg).unwrap_err());
        assert!(e.contains("conv1.weight") && e.contains("shape"), "{e}");
        // A file missing conv1.bias.
        let w = vec![0u8; 4 * 4 * 49];
        let path = dir.path().join("missing.safetensors");
        let views = vec![(
            "conv1.weight",
            TensorView::new(Dtype::F32, vec![4, 1, 7, 7], &w).unwrap(),
        )];
        safetensors::tensor::serialize_to_file(views, Some(info), &path).unwrap();
        let e = format!("{:#}", load_checkpoint(&path, &cfg).unwrap_err());
        assert!(e.contains("conv1.bias") && e.contains("missing"), "{e}");
    }
}
