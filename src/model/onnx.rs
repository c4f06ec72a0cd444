//! The model as a standard ONNX graph (opset 17), written with a small protobuf encoder for
//! the few `onnx.proto` messages it needs (no protobuf dependency, no code generation).
//!
//! Graph (eval mode: BatchNorm with running statistics, no dropout):
//! ```text
//! log_mel [batch, 1, n_mels, frames]  (dB, librosa power_to_db(ref=max) as training used)
//!   → Add(offset) → Div(scale)                      model input scale
//!   [→ ReduceMean/Sub/Mul/ReduceMean/Add/Sqrt/Div    per-utterance norm over frames, --norm]
//!   → 3 × [Conv k×k pad k/2 → BatchNormalization → Relu → MaxPool 2×2]
//!   → Transpose(3,0,1,2) → Reshape(0,0,-1)          [frames/8, batch, C3·n_mels/8]
//!   → MatMul + Add → Relu                           per-frame FC
//!   → L × [LSTM bidirectional → Transpose(0,2,1,3) → Reshape(0,0,-1)]
//!   → MatMul + Add → Tanh → Softmax(axis 0) → Mul → ReduceSum(axis 0)   attention pooling
//!   → Gemm(transB) → logits [batch, classes]; Softmax(axis 1) → probabilities
//! ```
//! An ensemble ([`export_onnx_ensemble`]) is one graph: each member's subgraph above, names
//! prefixed `m0.`, `m1.`, ..., on the shared input; their probabilities (Gather-permuted into
//! one class order where needed) → Mean → probabilities; Log → logits.
//!
//! `batch` and `frames` are dynamic (frames ≥ 8). The graph has no length masks: every clip
//! in a batch is taken as `frames` long, so a batch of equal-length clips equals this
//! project's results, while a clip padded to a longer batch is classified with its padding
//! (pad frames enter the convolutions, the LSTMs and the attention).
//!
//! PyTorch's LSTM gate order (i, f, g, o) is reordered to ONNX's (i, o, f, c).
//!
//! Layer: model (below train, engine and cli). May use the shared modules (`rng`, `isa`,
//! `cache`, `atomic_file`); nothing else of the crate.

use super::{
    lstm_names, BufferLayout, InputNorm, ModelConfig, ParamLayout, BN_EPS, UTTERANCE_NORM_EPS,
};
use anyhow::{bail, Result};

/// ONNX IR version 8 goes with opset 17.
const IR_VERSION: i64 = 8;
pub const OPSET: i64 = 17;

/// Protobuf wire types.
const VARINT: u8 = 0;
const LEN: u8 = 2;
const I32: u8 = 5;

/// A protobuf message being written (fields appended in order).
#[derive(Default)]
struct Pb(Vec<u8>);

impl Pb {
    fn varint(&mut self, mut v: u64) {
        while v >= 0x80 {
            self.0.push((v as u8) | 0x80);
            v >>= 7;
        }
        self.0.push(v as u8);
    }
    fn key(&mut self, field: u32, wire: u8) {
        self.varint(((field as u64) << 3) | wire as u64);
    }
    fn int(&mut self, field: u32, v: i64) -> &mut Self {
        self.key(field, VARINT);
        self.varint(v as u64);
        self
    }
    fn float(&mut self, field: u32, v: f32) -> &mut Self {
        self.key(field, I32);
        self.0.extend_from_slice(&v.to_le_bytes());
        self
    }
    fn bytes(&mut self, field: u32, b: &[u8]) -> &mut Self {
        self.key(field, LEN);
        self.varint(b.len() as u64);
        self.0.extend_from_slice(b);
        self
    }
    fn str(&mut self, field: u32, s: &str) -> &mut Self {
        self.bytes(field, s.as_bytes())
    }
    fn msg(&mut self, field: u32, m: &Pb) -> &mut Self {
        self.bytes(field, &m.0)
    }
}

// onnx.proto field numbers.
mod f {
    pub const MODEL_IR_VERSION: u32 = 1;
    pub const MODEL_PRODUCER_NAME: u32 = 2;
    pub const MODEL_PRODUCER_VERSION: u32 = 3;
    pub const MODEL_DOC: u32 = 6;
    pub const MODEL_GRAPH: u32 = 7;
    pub const MODEL_OPSET: u32 = 8;
    pub const MODEL_METADATA: u32 = 14;
    pub const OPSET_VERSION: u32 = 2;
    pub const GRAPH_NODE: u32 = 1;
    pub const GRAPH_NAME: u32 = 2;
    pub const GRAPH_INIT: u32 = 5;
    pub const GRAPH_INPUT: u32 = 11;
    pub const GRAPH_OUTPUT: u32 = 12;
    pub const NODE_INPUT: u32 = 1;
    pub const NODE_OUTPUT: u32 = 2;
    pub const NODE_NAME: u32 = 3;
    pub const NODE_OP: u32 = 4;
    pub const NODE_ATTR: u32 = 5;
    pub const ATTR_NAME: u32 = 1;
    pub const ATTR_F: u32 = 2;
    pub const ATTR_I: u32 = 3;
    pub const ATTR_S: u32 = 4;
    pub const ATTR_INTS: u32 = 8;
    pub const ATTR_TYPE: u32 = 20;
    pub const TENSOR_DIMS: u32 = 1;
    pub const TENSOR_TYPE: u32 = 2;
    pub const TENSOR_NAME: u32 = 8;
    pub const TENSOR_RAW: u32 = 9;
    pub const VI_NAME: u32 = 1;
    pub const VI_TYPE: u32 = 2;
    pub const TYPE_TENSOR: u32 = 1;
    pub const TT_ELEM: u32 = 1;
    pub const TT_SHAPE: u32 = 2;
    pub const SHAPE_DIM: u32 = 1;
    pub const DIM_VALUE: u32 = 1;
    pub const DIM_PARAM: u32 = 2;
    pub const KV_KEY: u32 = 1;
    pub const KV_VALUE: u32 = 2;
}
/// TensorProto.DataType and AttributeProto.AttributeType values.
const FLOAT: i64 = 1;
const INT64: i64 = 7;
const AT_FLOAT: i64 = 1;
const AT_INT: i64 = 2;
const AT_STRING: i64 = 3;
const AT_INTS: i64 = 7;

enum Attr<'a> {
    Int(i64),
    Float(f32),
    Str(&'a str),
    Ints(&'a [i64]),
}

/// A dimension of a graph input/output: fixed or named (dynamic).
enum Dim<'a> {
    Fixed(usize),
    Named(&'a str),
}

/// The graph's input, shared by every member of an ensemble.
const INPUT: &str = "log_mel";

#[derive(Default)]
struct Graph {
    nodes: Vec<Pb>,
    inits: Vec<Pb>,
    /// Put before every value and initializer name but the input's (an ensemble member's
    /// `m0.`, ...; empty for one model).
    prefix: String,
}

impl Graph {
    fn name(&self, n: &str) -> String {
        if n == INPUT {
            n.to_string()
        } else {
            format!("{}{n}", self.prefix)
        }
    }

    fn node(&mut self, op: &str, inputs: &[&str], output: &str, attrs: &[(&str, Attr)]) {
        let mut n = Pb::default();
        for i in inputs {
            n.str(f::NODE_INPUT, &self.name(i));
        }
        n.str(f::NODE_OUTPUT, &self.name(output));
        n.str(f::NODE_NAME, &format!("{op}_{}", self.nodes.len()));
        n.str(f::NODE_OP, op);
        for (name, a) in attrs {
            let mut m = Pb::default();
            m.str(f::ATTR_NAME, name);
            match a {
                Attr::Int(v) => m.int(f::ATTR_I, *v).int(f::ATTR_TYPE, AT_INT),
                Attr::Float(v) => m.float(f::ATTR_F, *v).int(f::ATTR_TYPE, AT_FLOAT),
                Attr::Str(s) => m.str(f::ATTR_S, s).int(f::ATTR_TYPE, AT_STRING),
                Attr::Ints(v) => {
                    for &x in *v {
                        m.int(f::ATTR_INTS, x);
                    }
                    m.int(f::ATTR_TYPE, AT_INTS)
                }
            };
            n.msg(f::NODE_ATTR, &m);
        }
        self.nodes.push(n);
    }

    fn tensor(&mut self, name: &str, dims: &[usize], data: &[f32]) {
        assert_eq!(dims.iter().product::<usize>(), data.len(), "{name}");
        let mut t = Pb::default();
        for &d in dims {
            t.int(f::TENSOR_DIMS, d as i64);
        }
        t.int(f::TENSOR_TYPE, FLOAT)
            .str(f::TENSOR_NAME, &self.name(name));
        t.bytes(f::TENSOR_RAW, bytemuck::cast_slice(data));
        self.inits.push(t);
    }

    fn tensor_i64(&mut self, name: &str, data: &[i64]) {
        let mut t = Pb::default();
        t.int(f::TENSOR_DIMS, data.len() as i64)
            .int(f::TENSOR_TYPE, INT64)
            .str(f::TENSOR_NAME, &self.name(name));
        let raw: Vec<u8> = data.iter().flat_map(|v| v.to_le_bytes()).collect();
        t.bytes(f::TENSOR_RAW, &raw);
        self.inits.push(t);
    }
}

fn value_info(name: &str, dims: &[Dim]) -> Pb {
    let mut shape = Pb::default();
    for d in dims {
        let mut dm = Pb::default();
        match d {
            Dim::Fixed(v) => dm.int(f::DIM_VALUE, *v as i64),
            Dim::Named(s) => dm.str(f::DIM_PARAM, s),
        };
        shape.msg(f::SHAPE_DIM, &dm);
    }
    let mut tt = Pb::default();
    tt.int(f::TT_ELEM, FLOAT).msg(f::TT_SHAPE, &shape);
    let mut ty = Pb::default();
    ty.msg(f::TYPE_TENSOR, &tt);
    let mut vi = Pb::default();
    vi.str(f::VI_NAME, name).msg(f::VI_TYPE, &ty);
    vi
}

/// Rows of a PyTorch LSTM tensor (gate blocks i, f, g, o of `h` rows each, `cols` wide)
/// in ONNX order (i, o, f, c).
fn onnx_gates(t: &[f32], h: usize, cols: usize) -> Vec<f32> {
    let block = |g: usize| &t[g * h * cols..(g + 1) * h * cols];
    [0, 3, 1, 2]
        .iter()
        .flat_map(|&g| block(g).iter().copied())
        .collect()
}

fn transpose(w: &[f32], rows: usize, cols: usize) -> Vec<f32> {
    let mut t = vec![0.0; w.len()];
    for r in 0..rows {
        for c in 0..cols {
            t[c * rows + r] = w[r * cols + c];
        }
    }
    t
}

/// Serialises the model (eval mode) as an ONNX ModelProto. `db_offset`/`db_scale` are the
/// run's input scaling (`(dB + offset) / scale`), applied inside the graph so its input is
/// plain log-Mel dB; `metadata` becomes the model's `metadata_props`, in the given order.
pub fn export_onnx(
    cfg: &ModelConfig,
    params: &[f32],
    buffers: &[f32],
    db_offset: f32,
    db_scale: f32,
    metadata: &[(String, String)],
) -> Result<Vec<u8>> {
    let mut g = Graph::default();
    add_model(&mut g, cfg, params, buffers, db_offset, db_scale)?;
    Ok(model_proto(
        &g,
        cfg.n_mels,
        cfg.classes,
        "ArabEmoNet speech emotion recognition. Input log_mel: [batch, 1, n_mels, frames] \
         log-Mel dB (librosa power_to_db of melspectrogram with ref=np.max; settings in \
         metadata_props), frames >= 8. Outputs: logits and probabilities [batch, classes] \
         in the order of metadata 'labels'. No length masks: batch clips of equal length.",
        metadata,
    ))
}

/// One run of an ensemble: its model, weights and input scaling, and for each class of the
/// ensemble (the first member's label order) its own output index.
pub struct OnnxMember<'a> {
    pub cfg: &'a ModelConfig,
    pub params: &'a [f32],
    pub buffers: &'a [f32],
    pub db_offset: f32,
    pub db_scale: f32,
    pub perm: Vec<usize>,
}

/// Serialises an ensemble as ONE graph: the shared input `log_mel` feeds each member's
/// subgraph (every name prefixed `m0.`, `m1.`, ...); each member's probabilities, permuted
/// into the first member's class order (Gather) where they differ, are averaged (Mean) into
/// `probabilities`, and `logits` = Log(probabilities), so softmax(logits) and argmax agree
/// with them. All members must share n_mels and the classes (the caller checks the front end).
pub fn export_onnx_ensemble(
    members: &[OnnxMember],
    metadata: &[(String, String)],
) -> Result<Vec<u8>> {
    let Some(first) = members.first() else {
        bail!("an ensemble needs at least one model");
    };
    let mut g = Graph::default();
    let mut outs = Vec::with_capacity(members.len());
    for (i, m) in members.iter().enumerate() {
        if m.cfg.n_mels != first.cfg.n_mels || m.cfg.classes != first.cfg.classes {
            bail!(
                "ensemble member {i}: {} mels and {} classes where member 0 has {} and {}",
                m.cfg.n_mels,
                m.cfg.classes,
                first.cfg.n_mels,
                first.cfg.classes
            );
        }
        let mut sorted = m.perm.clone();
        sorted.sort_unstable();
        if sorted != (0..m.cfg.classes).collect::<Vec<_>>() {
            bail!(
                "ensemble member {i}: {:?} is not a permutation of its classes",
                m.perm
            );
        }
        g.prefix = format!("m{i}.");
        add_model(&mut g, m.cfg, m.params, m.buffers, m.db_offset, m.db_scale)?;
        let mut out = "probabilities".to_string();
        if m.perm.iter().enumerate().any(|(c, &k)| c != k) {
            let idx: Vec<i64> = m.perm.iter().map(|&k| k as i64).collect();
            g.tensor_i64("class_order", &idx);
            g.node(
                "Gather",
                &["probabilities", "class_order"],
                "probabilities_ordered",
                &[("axis", Attr::Int(1))],
            );
            out = "probabilities_ordered".to_string();
        }
        outs.push(g.name(&out));
    }
    g.prefix.clear();
    let ins: Vec<&str> = outs.iter().map(|s| s.as_str()).collect();
    g.node("Mean", &ins, "probabilities", &[]);
    g.node("Log", &["probabilities"], "logits", &[]);
    Ok(model_proto(
        &g,
        first.cfg.n_mels,
        first.cfg.classes,
        &format!(
            "Ensemble of {} ArabEmoNet speech emotion models (mean of their probabilities). \
             Input log_mel: [batch, 1, n_mels, frames] log-Mel dB (librosa power_to_db of \
             melspectrogram with ref=np.max; settings in metadata_props), frames >= 8. \
             Outputs: probabilities [batch, classes] (the members' mean) and logits = \
             ln(probabilities), in the order of metadata 'labels'. No length masks: batch \
             clips of equal length.",
            members.len()
        ),
        metadata,
    ))
}

/// Adds one model's nodes and weights (names under `g.prefix`) from the input `log_mel` to
/// `logits` and `probabilities`.
fn add_model(
    g: &mut Graph,
    cfg: &ModelConfig,
    params: &[f32],
    buffers: &[f32],
    db_offset: f32,
    db_scale: f32,
) -> Result<()> {
    cfg.validate()?;
    let pl = ParamLayout::new(cfg);
    let bl = BufferLayout::new(cfg);
    if params.len() != pl.total() || buffers.len() != bl.total() {
        bail!(
            "got {} parameters and {} buffer values; this model needs {} and {}",
            params.len(),
            buffers.len(),
            pl.total(),
            bl.total()
        );
    }
    if let Some(i) = params.iter().chain(buffers).position(|v| !v.is_finite()) {
        bail!("weight {i} is not a finite number; refusing to export a broken model");
    }
    let p = |n: &str| &params[pl.range(n)];
    let b = |n: &str| &buffers[bl.range(n)];
    g.tensor("input_db_offset", &[], &[db_offset]);
    g.tensor("input_db_scale", &[], &[db_scale]);
    g.tensor_i64("flatten_last_two", &[0, 0, -1]);
    g.tensor_i64("time_axis", &[0]);
    g.node("Add", &["log_mel", "input_db_offset"], "x_shifted", &[]);
    g.node("Div", &["x_shifted", "input_db_scale"], "x", &[]);
    let mut cur = "x".to_string();
    if cfg.input_norm == InputNorm::Utterance {
        // per (clip, band) over the frames axis: (x − mean) / √(population var + ε)
        g.tensor("input_norm_eps", &[], &[UTTERANCE_NORM_EPS as f32]);
        let mean_over_frames = [("axes", Attr::Ints(&[3])), ("keepdims", Attr::Int(1))];
        g.node("ReduceMean", &["x"], "x_mean", &mean_over_frames);
        g.node("Sub", &["x", "x_mean"], "x_centred", &[]);
        g.node("Mul", &["x_centred", "x_centred"], "x_sq", &[]);
        g.node("ReduceMean", &["x_sq"], "x_var", &mean_over_frames);
        g.node("Add", &["x_var", "input_norm_eps"], "x_var_eps", &[]);
        g.node("Sqrt", &["x_var_eps"], "x_std", &[]);
        g.node("Div", &["x_centred", "x_std"], "x_norm", &[]);
        cur = "x_norm".to_string();
    }
    let (k, pad) = (cfg.kernel, (cfg.kernel / 2) as i64);
    for s in 1..=3 {
        let (ci, co) = (cfg.stage_in(s - 1), cfg.channels[s - 1]);
        let (w, bias) = (format!("conv{s}.weight"), format!("conv{s}.bias"));
        g.tensor(&w, &[co, ci, k, k], p(&w));
        g.tensor(&bias, &[co], p(&bias));
        let conv = format!("conv{s}");
        g.node(
            "Conv",
            &[&cur, &w, &bias],
            &conv,
            &[
                ("kernel_shape", Attr::Ints(&[k as i64, k as i64])),
                ("pads", Attr::Ints(&[pad, pad, pad, pad])),
                ("strides", Attr::Ints(&[1, 1])),
            ],
        );
        let mut act_in = conv;
        if cfg.batchnorm {
            let names = ["weight", "bias"].map(|x| format!("bn{s}.{x}"));
            let stats = ["running_mean", "running_var"].map(|x| format!("bn{s}.{x}"));
            for n in &names {
                g.tensor(n, &[co], p(n));
            }
            for n in &stats {
                g.tensor(n, &[co], b(n));
            }
            let out = format!("bn{s}");
            g.node(
                "BatchNormalization",
                &[&act_in, &names[0], &names[1], &stats[0], &stats[1]],
                &out,
                &[("epsilon", Attr::Float(BN_EPS as f32))],
            );
            act_in = out;
        }
        let relu = format!("relu{s}");
        g.node("Relu", &[&act_in], &relu, &[]);
        let pool = format!("pool{s}");
        g.node(
            "MaxPool",
            &[&relu],
            &pool,
            &[
                ("kernel_shape", Attr::Ints(&[2, 2])),
                ("strides", Attr::Ints(&[2, 2])),
            ],
        );
        cur = pool;
    }
    // [B, C, M, T] → [T, B, C·M] (feature index c·M + m, as the CPU model's frames).
    g.node(
        "Transpose",
        &[&cur],
        "pool3_tbcm",
        &[("perm", Attr::Ints(&[3, 0, 1, 2]))],
    );
    g.node(
        "Reshape",
        &["pool3_tbcm", "flatten_last_two"],
        "frames",
        &[],
    );
    g.tensor(
        "fc.weight_t",
        &[cfg.fc_in(), cfg.fc],
        &transpose(p("fc.weight"), cfg.fc, cfg.fc_in()),
    );
    g.tensor("fc.bias", &[cfg.fc], p("fc.bias"));
    g.node("MatMul", &["frames", "fc.weight_t"], "fc_mm", &[]);
    g.node("Add", &["fc_mm", "fc.bias"], "fc", &[]);
    g.node("Relu", &["fc"], "lstm_in0", &[]);
    let h = cfg.hidden;
    let mut cur = "lstm_in0".to_string();
    for l in 0..cfg.lstm_layers {
        let din = cfg.lstm_in(l);
        let (mut w, mut r, mut bb) = (Vec::new(), Vec::new(), Vec::new());
        for rev in [false, true] {
            let [wi, wh, bi, bh] = lstm_names(l, rev);
            w.extend(onnx_gates(p(&wi), h, din));
            r.extend(onnx_gates(p(&wh), h, h));
            bb.extend(onnx_gates(p(&bi), h, 1));
            bb.extend(onnx_gates(p(&bh), h, 1));
        }
        let (wn, rn, bn) = (
            format!("lstm{l}.W"),
            format!("lstm{l}.R"),
            format!("lstm{l}.B"),
        );
        g.tensor(&wn, &[2, 4 * h, din], &w);
        g.tensor(&rn, &[2, 4 * h, h], &r);
        g.tensor(&bn, &[2, 8 * h], &bb);
        let y = format!("lstm{l}_y");
        g.node(
            "LSTM",
            &[&cur, &wn, &rn, &bn],
            &y,
            &[
                ("direction", Attr::Str("bidirectional")),
                ("hidden_size", Attr::Int(h as i64)),
            ],
        );
        // [T, 2, B, H] → [T, B, 2, H] → [T, B, 2H] = [forward | reverse] per frame.
        let yt = format!("lstm{l}_tbdh");
        g.node(
            "Transpose",
            &[&y],
            &yt,
            &[("perm", Attr::Ints(&[0, 2, 1, 3]))],
        );
        let out = format!("lstm{}_out", l);
        g.node("Reshape", &[&yt, "flatten_last_two"], &out, &[]);
        cur = out;
    }
    g.tensor("attention.weight_t", &[2 * h, 1], p("attention.weight"));
    g.tensor("attention.bias", &[1], p("attention.bias"));
    g.node("MatMul", &[&cur, "attention.weight_t"], "att_mm", &[]);
    g.node("Add", &["att_mm", "attention.bias"], "att_pre", &[]);
    g.node("Tanh", &["att_pre"], "att_e", &[]);
    g.node(
        "Softmax",
        &["att_e"],
        "att_alpha",
        &[("axis", Attr::Int(0))],
    );
    g.node("Mul", &["att_alpha", &cur], "att_weighted", &[]);
    g.node(
        "ReduceSum",
        &["att_weighted", "time_axis"],
        "context",
        &[("keepdims", Attr::Int(0))],
    );
    g.tensor(
        "classifier.weight",
        &[cfg.classes, 2 * h],
        p("classifier.weight"),
    );
    g.tensor("classifier.bias", &[cfg.classes], p("classifier.bias"));
    g.node(
        "Gemm",
        &["context", "classifier.weight", "classifier.bias"],
        "logits",
        &[("transB", Attr::Int(1))],
    );
    g.node(
        "Softmax",
        &["logits"],
        "probabilities",
        &[("axis", Attr::Int(1))],
    );
    Ok(())
}

/// The ModelProto of a finished graph with input `log_mel` [batch, 1, n_mels, frames] and
/// outputs `logits` and `probabilities` [batch, classes].
fn model_proto(
    g: &Graph,
    n_mels: usize,
    classes: usize,
    doc: &str,
    metadata: &[(String, String)],
) -> Vec<u8> {
    let mut graph = Pb::default();
    for n in &g.nodes {
        graph.msg(f::GRAPH_NODE, n);
    }
    graph.str(f::GRAPH_NAME, "arabemonet");
    for t in &g.inits {
        graph.msg(f::GRAPH_INIT, t);
    }
    graph.msg(
        f::GRAPH_INPUT,
        &value_info(
            "log_mel",
            &[
                Dim::Named("batch"),
                Dim::Fixed(1),
                Dim::Fixed(n_mels),
                Dim::Named("frames"),
            ],
        ),
    );
    for out in ["logits", "probabilities"] {
        graph.msg(
            f::GRAPH_OUTPUT,
            &value_info(out, &[Dim::Named("batch"), Dim::Fixed(classes)]),
        );
    }
    let mut opset = Pb::default();
    opset.int(f::OPSET_VERSION, OPSET);
    let mut m = Pb::default();
    m.int(f::MODEL_IR_VERSION, IR_VERSION)
        .str(f::MODEL_PRODUCER_NAME, "ser-engine")
        .str(f::MODEL_PRODUCER_VERSION, env!("CARGO_PKG_VERSION"))
        .str(f::MODEL_DOC, doc)
        .msg(f::MODEL_GRAPH, &graph)
        .msg(f::MODEL_OPSET, &opset);
    for (k, v) in metadata {
        let mut kv = Pb::default();
        kv.str(f::KV_KEY, k).str(f::KV_VALUE, v);
        m.msg(f::MODEL_METADATA, &kv);
    }
    m.0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn varints_and_keys_follow_the_protobuf_encoding() {
        let mut p = Pb::default();
        p.int(1, 150); // the protobuf docs' example: 08 96 01
        assert_eq!(p.0, vec![0x08, 0x96, 0x01]);
        let mut p = Pb::default();
        p.int(3, -1); // negative int64: ten bytes
        assert_eq!(p.0.len(), 11);
        let mut p = Pb::default();
        p.str(2, "testing"); // 12 07 74 65 73 74 69 6e 67
        assert_eq!(p.0, b"\x12\x07testing".to_vec());
        let mut p = Pb::default();
        p.float(2, 1.0);
        assert_eq!(p.0, vec![0x15, 0, 0, 0x80, 0x3f]);
    }

    #[test]
    fn gates_are_reordered_ifgo_to_iofc() {
        // h = 1, cols = 2: blocks i=[0,1], f=[2,3], g=[4,5], o=[6,7].
        let t: Vec<f32> = (0..8).map(|v| v as f32).collect();
        assert_eq!(onnx_gates(&t, 1, 2), vec![0., 1., 6., 7., 2., 3., 4., 5.]);
    }
}
