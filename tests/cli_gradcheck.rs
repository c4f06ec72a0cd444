//! `ser-engine gradcheck` prints the table and succeeds on cpu, and on sim prints the
//! device-vs-cpu table of every gradient.

use assert_cmd::Command;
use predicates::prelude::*;
use predicates::str::contains;

#[test]
fn gradcheck_cpu_prints_table() {
    Command::cargo_bin("ser-engine")
        .unwrap()
        .args(["gradcheck", "--device", "cpu"])
        .assert()
        .success()
        .stdout(
            contains("BiLSTM layer")
                .and(contains("model train"))
                .and(contains("FAIL").not()),
        );
}

#[test]
fn gradcheck_sim_compares_every_gradient_with_cpu() {
    Command::cargo_bin("ser-engine")
        .unwrap()
        .args(["gradcheck", "--device", "sim"])
        .assert()
        .success()
        .stdout(
            contains("bn grad conv1.weight")
                .and(contains("no-bn grad lstm.weight_hh_l1_reverse"))
                .and(contains("bn logits (eval)"))
                .and(contains("FAIL").not()),
        );
}
