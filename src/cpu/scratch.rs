//! Per-thread scratch buffers kept between calls, so the hot ops (im2col, FFT convolution)
//! neither page-fault fresh memory in nor zero-fill it on every call.
//!
//! Layer: cpu, the reference (below train, engine and cli). May use `model` and the shared
//! modules (`rng`, `isa`, `cache`, `atomic_file`).

use std::any::{Any, TypeId};
use std::cell::RefCell;
use std::collections::HashMap;

thread_local! {
    /// One value per scratch type (type-erased: the ops are generic over the float type).
    static SCRATCH: RefCell<HashMap<TypeId, Box<dyn Any>>> = RefCell::new(HashMap::new());
}

/// Runs `f` with this thread's `S` (a fresh default one on first use, or when a caller up the
/// stack already holds this thread's `S`), and keeps it for the next call.
pub(crate) fn with_thread_scratch<S: Default + 'static, R>(f: impl FnOnce(&mut S) -> R) -> R {
    let key = TypeId::of::<S>();
    let mut s: S = SCRATCH
        .with(|c| c.borrow_mut().remove(&key))
        .and_then(|b| b.downcast::<S>().ok())
        .map(|b| *b)
        .unwrap_or_default();
    let r = f(&mut s);
    SCRATCH.with(|c| c.borrow_mut().insert(key, Box::new(s)));
    r
}

/// Grows `v` to at least `n` elements (new ones default, i.e. zero) and returns its first `n`;
/// values left from earlier calls are unspecified: callers overwrite what they read.
pub(crate) fn grow<V: Clone + Default>(v: &mut Vec<V>, n: usize) -> &mut [V] {
    if v.len() < n {
        v.resize(n, V::default());
    }
    &mut v[..n]
}

/// Whole vectors handed back by [`recycle`], per thread and element type, for [`reuse`]: the
/// buffers that outlive one call (a training step's saved FFT spectra) and are freed at the
/// end of the step. Those can exceed glibc's 32 MiB mmap threshold (`super::alloc`), so
/// freeing and allocating them anew would page-fault them in on every step.
struct Pool<V>(Vec<Vec<V>>);

impl<V> Default for Pool<V> {
    fn default() -> Self {
        Pool(Vec::new())
    }
}

/// Vectors a thread's pool keeps at most (the smallest beyond this are freed): two FFT stages
/// with two buffers each, plus slack for a step of another shape.
const POOL_MAX: usize = 8;

/// A vector of `n` elements, taken from this thread's pool when one fits (the smallest that
/// holds `n`, else the largest, grown); its values are unspecified: callers overwrite all.
pub(crate) fn reuse<V: Clone + Default + 'static>(n: usize) -> Vec<V> {
    let mut v = with_thread_scratch(|p: &mut Pool<V>| {
        let fit = (0..p.0.len())
            .filter(|&i| p.0[i].capacity() >= n)
            .min_by_key(|&i| p.0[i].capacity())
            .or_else(|| (0..p.0.len()).max_by_key(|&i| p.0[i].capacity()));
        fit.map(|i| p.0.swap_remove(i)).unwrap_or_default()
    });
    v.truncate(n);
    v.resize(n, V::default());
    v
}

/// Hands `v` to this thread's pool for a later [`reuse`] (keeping the [`POOL_MAX`] largest).
pub(crate) fn recycle<V: 'static>(v: Vec<V>) {
    if v.capacity() == 0 {
        return;
    }
    with_thread_scratch(|p: &mut Pool<V>| {
        p.0.push(v);
        if p.0.len() > POOL_MAX {
            let smallest = (0..p.0.len()).min_by_key(|&i| p.0[i].capacity());
            if let Some(i) = smallest {
                p.0.swap_remove(i);
            }
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scratch_is_kept_per_type_and_fresh_when_nested() {
        with_thread_scratch(|v: &mut Vec<f32>| grow(v, 5).fill(2.0));
        // Kept: the next call sees the same buffer.
        with_thread_scratch(|v: &mut Vec<f32>| assert_eq!(v, &vec![2.0; 5]));
        // Another type has its own slot.
        with_thread_scratch(|v: &mut Vec<f64>| assert!(v.is_empty()));
        // Nested use of the same type gets a fresh buffer, not an alias.
        with_thread_scratch(|outer: &mut Vec<f32>| {
            with_thread_scratch(|inner: &mut Vec<f32>| assert!(inner.is_empty()));
            assert_eq!(outer.len(), 5);
        });
        let mut v = vec![1u8; 3];
        assert_eq!(grow(&mut v, 2), &[1, 1]);
        assert_eq!(grow(&mut v, 4), &[1, 1, 1, 0]);
    }

    #[test]
    fn pool_reuses_the_best_fit_and_stays_bounded() {
        let a: Vec<u16> = reuse(1000);
        assert_eq!(a.len(), 1000);
        let (pa, cap) = (a.as_ptr(), a.capacity());
        recycle(a);
        recycle(vec![7u16; 10]);
        // The 1000-element buffer is the smallest that holds 500: same allocation, 500 long.
        let b: Vec<u16> = reuse(500);
        assert_eq!((b.as_ptr(), b.len(), b.capacity()), (pa, 500, cap));
        // None holds 20 000: the largest left (the 10-element one) is grown.
        let c: Vec<u16> = reuse(20_000);
        assert_eq!(c.len(), 20_000);
        // Bounded: after many hand-backs at most POOL_MAX stay.
        for i in 0..3 * POOL_MAX {
            recycle(vec![0u16; i + 1]);
        }
        let kept = with_thread_scratch(|p: &mut Pool<u16>| p.0.len());
        assert_eq!(kept, POOL_MAX);
        drop((b, c));
    }
}
