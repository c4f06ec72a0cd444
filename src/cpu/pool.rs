//! ReLU and 2×2 max pooling (stride 2, floor) over `[B][C][M][T]`, with the per-clip time mask
//! applied to the pooled output: pooled frames t ≥ lens_out[b] are zero and get no gradient.

use super::Float;
use rayon::prelude::*;

/// y = max(x, 0) elementwise (in place allowed by passing the same data to both via copy).
pub fn relu_forward<T: Float>(x: &[T], y: &mut [T]) {
    y.par_chunks_mut(4096)
        .zip(x.par_chunks(4096))
        .for_each(|(yc, xc)| {
            for (a, b) in yc.iter_mut().zip(xc) {
                *a = if *b > T::zero() { *b } else { T::zero() };
            }
        });
}

/// x = max(x, 0) in place: same values as [`relu_forward`] without a second buffer (saves an
/// allocation and a pass over each conv stage's largest activation).
pub fn relu_inplace<T: Float>(x: &mut [T]) {
    x.par_chunks_mut(4096).for_each(|c| {
        for a in c.iter_mut() {
            *a = if *a > T::zero() { *a } else { T::zero() };
        }
    });
}

/// dx = dy where the ReLU output y > 0, else 0 (torch: gradient 0 at x ≤ 0).
pub fn relu_backward<T: Float>(y: &[T], dy: &[T], dx: &mut [T]) {
    dx.par_chunks_mut(4096)
        .zip(y.par_chunks(4096).zip(dy.par_chunks(4096)))
        .for_each(|(dc, (yc, gc))| {
            for ((d, yv), g) in dc.iter_mut().zip(yc).zip(gc) {
                *d = if *yv > T::zero() { *g } else { T::zero() };
            }
        });
}

/// Max pool 2×2: x `[B][C][M][T]` -> y `[B][C][M/2][T/2]`; `arg[i]` ∈ 0..4 is the winning
/// window element (row-major: (0,0),(0,1),(1,0),(1,1); the first maximum wins, like torch).
/// Outputs at pooled frame t ≥ lens_out[b] are zero (the mask).
#[allow(clippy::too_many_arguments)]
pub fn maxpool2_forward<T: Float>(
    x: &[T],
    lens_out: &[usize],
    c: usize,
    m: usize,
    t: usize,
    y: &mut [T],
    arg: &mut [u8],
) {
    let (mo, to) = (m / 2, t / 2);
    y.par_chunks_mut(mo * to)
        .zip(arg.par_chunks_mut(mo * to))
        .enumerate()
        .for_each(|(bc, (yr, ar))| {
            let l = lens_out[bc / c].min(to);
            let xr = &x[bc * m * t..(bc + 1) * m * t];
            for i in 0..mo {
                let r0 = &xr[2 * i * t..(2 * i + 1) * t];
                let r1 = &xr[(2 * i + 1) * t..(2 * i + 2) * t];
                for j in 0..l {
                    let v = [r0[2 * j], r0[2 * j + 1], r1[2 * j], r1[2 * j + 1]];
                    let mut best = 0;
                    for q in 1..4 {
                        if v[q] > v[best] || v[q].is_nan() {
                            best = q;
                        }
                    }
                    yr[i * to + j] = v[best];
                    ar[i * to + j] = best as u8;
                }
                yr[i * to + l..(i + 1) * to].fill(T::zero());
                ar[i * to + l..(i + 1) * to].fill(0);
            }
        });
}

/// dx (overwritten, `[B][C][M][T]`) gets dy routed to each window's winner (valid frames only).
pub fn maxpool2_backward<T: Float>(
    dy: &[T],
    arg: &[u8],
    lens_out: &[usize],
    c: usize,
    m: usize,
    t: usize,
    dx: &mut [T],
) {
    let (mo, to) = (m / 2, t / 2);
    dx.par_chunks_mut(m * t).enumerate().for_each(|(bc, dr)| {
        dr.fill(T::zero());
        let l = lens_out[bc / c].min(to);
        let gy = &dy[bc * mo * to..(bc + 1) * mo * to];
        let ga = &arg[bc * mo * to..(bc + 1) * mo * to];
        for i in 0..mo {
            for j in 0..l {
                let a = ga[i * to + j] as usize;
                dr[(2 * i + a / 2) * t + 2 * j + a % 2] = gy[i * to + j];
            }
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pool_picks_max_masks_and_routes_gradient() {
        // one clip, one channel, 2×6 → 1×3, lens_out 2 (third pooled frame masked)
        let x = [
            1.0, 5.0, -1.0, -2.0, 9.0, 9.0, 3.0, 2.0, -3.0, -0.5, 1.0, 1.0,
        ];
        let mut y = [f64::NAN; 3];
        let mut a = [9u8; 3];
        maxpool2_forward(&x, &[2], 1, 2, 6, &mut y, &mut a);
        assert_eq!(y, [5.0, -0.5, 0.0]);
        assert_eq!(a, [1, 3, 0]);
        let mut dx = [f64::NAN; 12];
        maxpool2_backward(&[10.0, 20.0, 30.0], &a, &[2], 1, 2, 6, &mut dx);
        let mut want = [0.0; 12];
        want[1] = 10.0;
        want[9] = 20.0;
        assert_eq!(dx, want);
        // odd sizes floor: 3×5 → 1×2
        let x3: Vec<f64> = (0..15).map(|v| v as f64).collect();
        let mut y3 = [0.0; 2];
        let mut a3 = [0u8; 2];
        maxpool2_forward(&x3, &[2], 1, 3, 5, &mut y3, &mut a3);
        assert_eq!(y3, [6.0, 8.0]);
    }

    #[test]
    fn relu_and_its_gradient() {
        let x = [-1.0f32, 0.0, 2.0];
        let mut y = [9.0; 3];
        relu_forward(&x, &mut y);
        assert_eq!(y, [0.0, 0.0, 2.0]);
        // In place gives the same values as out of place, NaN included (→ 0 in both).
        let xs = [-3.0f32, -0.0, 0.5, f32::NAN, 7.0, -1e-30];
        let mut yo = [9.0f32; 6];
        relu_forward(&xs, &mut yo);
        let mut yi = xs;
        relu_inplace(&mut yi);
        assert_eq!(yi.map(f32::to_bits), yo.map(f32::to_bits));
        let mut dx = [9.0; 3];
        relu_backward(&y, &[1.0, 1.0, 1.0], &mut dx);
        assert_eq!(dx, [0.0, 0.0, 1.0]);
    }
}
