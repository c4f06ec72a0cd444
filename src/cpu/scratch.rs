//! Per-thread scratch buffers kept between calls, so the hot ops (im2col, FFT convolution)
//! neither page-fault fresh memory in nor zero-fill it on every call.

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
}
