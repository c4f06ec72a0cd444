//! The shape of one convolution and the names of the two algorithms that compute it: the
//! bottom of `cpu::conv`, used by the algorithms, the tuner and the dispatch above them.
//! Uses nothing else.

/// Shape of one convolution.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct ConvShape {
    pub batch: usize,
    pub cin: usize,
    pub cout: usize,
    pub k: usize,
    /// Mel bins (height).
    pub m: usize,
    /// Padded frames (width).
    pub t: usize,
}

impl ConvShape {
    pub(super) fn kk(&self) -> usize {
        self.cin * self.k * self.k
    }
    pub fn x_len(&self) -> usize {
        self.batch * self.cin * self.m * self.t
    }
    pub fn y_len(&self) -> usize {
        self.batch * self.cout * self.m * self.t
    }
    pub fn w_len(&self) -> usize {
        self.cout * self.kk()
    }
}

/// How a convolution is computed: both give the same results up to rounding.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ConvAlgo {
    /// im2col + GEMM ([`super::direct`]).
    Direct,
    /// Whole-plane FFTs and per-bin channel mixing ([`super::fft`]).
    Fft,
}

impl ConvAlgo {
    /// The `SER_CPU_CONV` spelling.
    pub fn name(self) -> &'static str {
        match self {
            ConvAlgo::Direct => "direct",
            ConvAlgo::Fft => "fft",
        }
    }
}
