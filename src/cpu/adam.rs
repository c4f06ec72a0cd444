//! Adam exactly as torch.optim.Adam (L2 weight decay added to the gradient, bias corrections,
//! eps added after sqrt(v̂)), or AdamW (decoupled decay) when `decoupled`; and
//! torch.nn.utils.clip_grad_norm_.
//!
//! Layer: cpu, the reference (below train, engine and cli). May use `model` and the shared
//! modules (`rng`, `isa`, `cache`, `atomic_file`).

use super::Float;
use std::ops::Range;

#[derive(Clone, Debug)]
pub struct Adam<T> {
    pub lr: T,
    pub beta1: T,
    pub beta2: T,
    pub eps: T,
    pub weight_decay: T,
    pub decoupled: bool,
    /// Steps taken.
    pub t: u64,
    pub m: Vec<T>,
    pub v: Vec<T>,
}

impl<T: Float> Adam<T> {
    /// torch defaults: betas (0.9, 0.999), eps 1e-8.
    pub fn new(n: usize, lr: T, weight_decay: T) -> Self {
        Self {
            lr,
            beta1: T::cst(0.9),
            beta2: T::cst(0.999),
            eps: T::cst(1e-8),
            weight_decay,
            decoupled: false,
            t: 0,
            m: vec![T::zero(); n],
            v: vec![T::zero(); n],
        }
    }

    pub fn step(&mut self, params: &mut [T], grads: &[T]) {
        assert_eq!(params.len(), self.m.len());
        assert_eq!(grads.len(), self.m.len());
        self.t += 1;
        self.update(params, grads, 0..params.len(), self.lr);
    }

    /// One step in learning-rate groups (`backend::LrGroup`): each `(range, scale)` at
    /// lr × scale; a group of scale 0 keeps its parameters and moments as they are. `t`
    /// counts the step once for all groups.
    pub fn step_groups(&mut self, params: &mut [T], grads: &[T], groups: &[(Range<usize>, T)]) {
        assert_eq!(params.len(), self.m.len());
        assert_eq!(grads.len(), self.m.len());
        self.t += 1;
        for (r, scale) in groups {
            if *scale != T::zero() {
                self.update(params, grads, r.clone(), self.lr * *scale);
            }
        }
    }

    /// The update of elements `r` at learning rate `lr` (step `self.t`).
    fn update(&mut self, params: &mut [T], grads: &[T], r: Range<usize>, lr: T) {
        let (b1, b2, wd) = (self.beta1, self.beta2, self.weight_decay);
        let bc1 = T::one() - b1.powi(self.t as i32);
        let bc2_sqrt = (T::one() - b2.powi(self.t as i32)).sqrt();
        let step_size = lr / bc1;
        for i in r {
            let mut g = grads[i];
            if self.decoupled {
                params[i] = params[i] * (T::one() - lr * wd);
            } else if wd != T::zero() {
                g = g + wd * params[i];
            }
            self.m[i] = b1 * self.m[i] + (T::one() - b1) * g;
            self.v[i] = b2 * self.v[i] + (T::one() - b2) * g * g;
            let denom = self.v[i].sqrt() / bc2_sqrt + self.eps;
            params[i] = params[i] - step_size * self.m[i] / denom;
        }
    }
}

/// Scales `grads` so that their L2 norm is at most `max_norm` (coef = max/(norm+1e-6),
/// applied only when < 1); returns the norm before clipping.
pub fn clip_grad_norm<T: Float>(grads: &mut [T], max_norm: T) -> T {
    let norm = grads.iter().map(|&g| g * g).sum::<T>().sqrt();
    let coef = max_norm / (norm + T::cst(1e-6));
    if coef < T::one() {
        for g in grads.iter_mut() {
            *g = *g * coef;
        }
    }
    norm
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_steps_by_hand() {
        // Step 1: m̂ = g, v̂ = g², update = lr·g/(|g|+eps) ≈ lr·sign(g).
        let mut a = Adam::<f64>::new(2, 0.1, 0.0);
        let mut p = [1.0, -2.0];
        a.step(&mut p, &[0.5, -3.0]);
        assert!((p[0] - (1.0 - 0.1 * 0.5 / (0.5 + 1e-8))).abs() < 1e-15);
        assert!((p[1] - (-2.0 + 0.1 * 3.0 / (3.0 + 1e-8))).abs() < 1e-15);
        // Step 2 with L2 decay 0.01, written out from torch's algorithm.
        let mut a = Adam::<f64>::new(1, 0.01, 0.01);
        let mut p = [1.0];
        let g = [0.3, -0.2];
        a.step(&mut p, &g[..1]);
        a.step(&mut p, &g[1..]);
        let mut pp = 1.0f64;
        let (mut m, mut v) = (0.0, 0.0);
        for (t, gg) in g.iter().enumerate() {
            let gd = gg + 0.01 * pp;
            m = 0.9 * m + 0.1 * gd;
            v = 0.999 * v + 0.001 * gd * gd;
            let t = (t + 1) as i32;
            pp -= 0.01 / (1.0 - 0.9f64.powi(t)) * m
                / (v.sqrt() / (1.0 - 0.999f64.powi(t)).sqrt() + 1e-8);
        }
        assert!((p[0] - pp).abs() < 1e-15);
        // AdamW: the decay multiplies the parameter, the gradient is untouched.
        let mut a = Adam::<f64>::new(1, 0.1, 0.5);
        a.decoupled = true;
        let mut p = [2.0];
        a.step(&mut p, &[1.0]);
        assert!((p[0] - (2.0 * (1.0 - 0.05) - 0.1 / (1.0 + 1e-8))).abs() < 1e-15);
    }

    #[test]
    fn groups_step_at_their_scale_and_scale_zero_is_frozen() {
        let g = [0.5f64, -3.0, 0.25, 1.0];
        let p0 = [1.0f64, -2.0, 0.5, 0.0];
        // the whole step at lr 0.1, and the same at lr 0.1 × 0.5 = 0.05, element by element
        let (mut full, mut half) = (
            Adam::<f64>::new(4, 0.1, 0.01),
            Adam::<f64>::new(4, 0.05, 0.01),
        );
        let (mut pf, mut ph) = (p0, p0);
        full.step(&mut pf, &g);
        half.step(&mut ph, &g);
        let mut a = Adam::<f64>::new(4, 0.1, 0.01);
        let mut p = p0;
        a.step_groups(&mut p, &g, &[(0..1, 0.0), (1..3, 0.5), (3..4, 1.0)]);
        assert_eq!(a.t, 1);
        assert_eq!(p[0], p0[0]);
        assert_eq!((a.m[0], a.v[0]), (0.0, 0.0));
        assert_eq!(&p[1..3], &ph[1..3]);
        assert_eq!(p[3], pf[3]);
        assert_ne!(p[3], p0[3]);
    }

    #[test]
    fn clipping() {
        let mut g = [3.0f64, 4.0];
        let n = clip_grad_norm(&mut g, 1.0);
        assert_eq!(n, 5.0);
        assert!((g[0] - 3.0 / (5.0 + 1e-6)).abs() < 1e-15);
        let mut g = [0.3f64, 0.4];
        clip_grad_norm(&mut g, 1.0);
        assert_eq!(g, [0.3, 0.4]);
    }
}
