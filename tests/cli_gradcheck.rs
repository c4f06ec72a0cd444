//! `ser-engine gradcheck` prints the table and succeeds on cpu; device gradchecks are refused
//! with a clear message until the device engine exists.

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
fn gradcheck_sim_is_refused_clearly() {
    Command::cargo_bin("ser-engine")
        .unwrap()
        .args(["gradcheck", "--device", "sim"])
        .assert()
        .failure()
        .stderr(contains("device engine"));
}
