//! Finite-difference gradient checks of every CPU op and the whole model (f64).

use ser_engine::cpu::gradcheck::{format_table, run_all};

#[test]
fn all_gradients_match_finite_differences() {
    let rows = run_all();
    println!("{}", format_table(&rows));
    assert_eq!(rows.len(), 14);
    for r in &rows {
        assert!(r.checked > 0, "{} checked nothing", r.op);
        // `<=` fails on NaN.
        assert!(r.max_rel_err <= 1e-6, "{}: {:e}", r.op, r.max_rel_err);
        assert!(r.ok);
    }
}
