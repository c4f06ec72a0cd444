//! The 2-D "same" convolution of [`super::direct`] computed with FFTs: same signatures, same
//! masking semantics, results equal to the direct (im2col + GEMM) convolution up to rounding.
//!
//! Why: at the model's stages 2 and 3 (k = 7, 32→64 and 64→128 channels) the direct
//! convolution costs ~800 MFLOP per clip each and already runs near the fp32 peak; in the
//! frequency domain the k×k spatial sum becomes one complex multiply per bin, so only the
//! per-bin channel mixing (`cout × cin × B` complex MACs) remains, ~10× fewer FLOPs.
//!
//! # Grid
//! One frequency grid per call, shared by the whole batch: `N1 ≥ M + p` mel bins and an even
//! `N2 ≥ Lmax + p` time bins, `p = k/2`, `Lmax` the longest valid clip, both 5-smooth
//! (2·3·5, the fastest rustfft sizes; 72 × 72 at stage 2, 36 × 36 at stage 3). Only outputs at `0 ≤ m < M`, `0 ≤ t < L` are kept, and they
//! read inputs at offsets `−p..=k−1−p`; with `N ≥ L + p` a circular wrap only ever lands in
//! the zero padding, so the circular convolution equals the linear one there (the same holds
//! for dx and for the `k×k` lags of dw). `NH = N2/2 + 1` bins are kept along time (real FFT).
//!
//! The conv is a cross-correlation, `y[m] = Σ_d w[d]·x[m + d − p]`, i.e. a circular
//! convolution with `g[(p − d) mod N] = w[d]`, so `Y = G·X` with
//! `G[f1][f2] = Σ_{di,dj} w[di][dj]·E1[f1][di]·E2[f2][dj]`, `E[f][d] = exp(−2πi·f·(p−d)/N)`.
//! `G` is computed from the k×k taps by two small GEMMs against these DFT matrices (9× fewer
//! FLOPs than FFTs of mostly-zero planes). Backward: `dX = conj(G)·dY`,
//! `dG = Σ_b dY·conj(X)`, and `dw[di][dj] = (1/N)·Σ_f Re(dG[f]·conj(E1[f1][di]·E2[f2][dj]))`
//! over the full spectrum = the half spectrum with weight 2 on bins other than `f2 = 0` and
//! `f2 = N2/2`.
//!
//! # Layouts (per call; `P = cout·cin` weight planes, `s` = 0 real / 1 imaginary part)
//! Every buffer is laid out so that, for one bin, each GEMM operand is a plain strided matrix
//! (no per-bin gathers) and each parallel job writes one contiguous chunk.
//! - `xe` / `dye`: expanded input (or dy) spectra `[2][c][f1][f2][2B]`: part 0 holds
//!   `[Re | Im]` of the B clips, part 1 `[−Im | Re]` (x) or `[Im | −Re]` (dy). For a bin,
//!   rows `(s, c)` are uniformly strided (`N1·NH·2B`). Built per channel (one real FFT per
//!   masked row, one complex FFT per column) by one job, which writes the B planes that share
//!   each cache line.
//! - `g`: weight spectrum `[co][s][f1][f2][ci]` real: for a bin, the `cout × cin` real (or
//!   imaginary) matrix has row stride `2·N1·NH·cin` and unit column stride.
//! - `ys` / `dxs`: mixed spectra `[f1][c][f2][2B]` (`[Re | Im]` per channel; one job per
//!   `f1`), read back per channel by the inverse transforms.
//! - dw: each `f1` job holds its row of `dG` (`[s][f2][co][ci]`, in cache) and reduces it
//!   at once to the k time lags `q[f1][s][dj][co][ci] = Σ_f2 (c_f2/N)·conj(E2[f2][dj])·dG`
//!   (one GEMM; `q` is `2k/NH`× smaller than dG); then `dw[..][di][dj] += Σ_f1
//!   Re(conj(E1[f1][di])·q[f1][dj])`, one GEMM per dj, added in a fixed order.
//!
//! Those buffers live in a per-thread cache on the calling thread (they grow to the largest
//! stage and are reused: no page faults on repeated calls). A training step's forward keeps
//! its `xe` and `g` instead ([`FftSaved`]) and hands them to the backward, which then
//! transforms only dy.
//!
//! Channel mixing per bin is real GEMMs on the expanded operands:
//! `[Yr | Yi] = Gr·[Xr | Xi] + Gi·[−Xi | Xr]`; `[dXr | dXi] = Grᵀ·[dYr | dYi] + Giᵀ·[dYi | −dYr]`;
//! `[dGr | dGi] = [dYr | dYi]·[[Xr, Xi], [−Xi, Xr]]ᵀ` (the sum over the batch is inside the
//! GEMM).
//!
//! # Determinism
//! Every reduction has a fixed order: FFTs per plane, GEMMs per bin (sum over channels and
//! over the batch inside one GEMM call), weight transforms per output channel; rayon only
//! distributes independent jobs, so results do not depend on the thread count.
//!
//! # Accuracy
//! FFT convolution error is norm-wise (`~ε·log N` relative to the whole output, not per
//! element): measured against the f64 direct conv, f64 agrees to ≤ 1e-15 relative norm and
//! f32 to ~2e-7 (≈ 3–5 ε, about the f32 direct conv's own error) on y, dx, dw and db. Outputs
//! much smaller than their plane's norm get the same absolute error, so a larger relative one
//! than with the direct conv; the tests bound 1e-12 (f64) and 2e-6 (f32) relative norm.
//!
//! Files: `transform.rs` (grid, plans, plane transforms), `weights.rs` (the weight
//! spectrum), `forward.rs`, `backward.rs`; `tests.rs` and `timing.rs` (the measurements behind
//! the cost model). Uses [`super::shape`], the cpu GEMMs and scratch, rustfft and realfft.

mod backward;
mod forward;
mod transform;
mod weights;

#[cfg(test)]
mod tests;
#[cfg(test)]
mod timing;

pub use backward::conv2d_backward_fft;
pub use forward::{conv2d_forward_fft, conv2d_forward_fft_saving, FftSaved};
pub(crate) use transform::Grid;
