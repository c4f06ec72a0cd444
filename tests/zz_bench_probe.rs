#[test]
#[ignore]
fn probe() {
    let _ = rayon::ThreadPoolBuilder::new()
        .num_threads(2)
        .build_global();
    let (tr, inf) = ser_engine::cpu::bench::bench_train(16, 126, 3, 7);
    println!("train {tr:.1} infer {inf:.1}");
}
