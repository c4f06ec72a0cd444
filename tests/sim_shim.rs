//! The simulator itself: shuffled order exposes a missing barrier, barrier divergence is an
//! error (not a hang), warp collectives, __syncthreads_count/and/or, atomics, assertions, and
//! concurrent launches from several test threads.

use ser_engine::device::{blocks_for, Device, SimDevice, SimOptions};
use ser_engine::rng::{Purpose, Stream};

fn sim(shuffle: bool, seed: u64) -> Device {
    Device::Sim(SimDevice::with_options(SimOptions {
        shuffle,
        seed,
        workers: 0,
        ..SimOptions::default()
    }))
}

/// Without racecheck, so the shuffled order alone has to expose the bug.
fn sim_unchecked(seed: u64) -> Device {
    Device::Sim(SimDevice::with_options(SimOptions {
        shuffle: true,
        seed,
        workers: 0,
        checks: false,
    }))
}

fn rotate(x: &[f32]) -> Vec<f32> {
    (0..x.len()).map(|t| x[(t + 1) % x.len()]).collect()
}

#[test]
fn shuffled_order_exposes_a_missing_barrier() {
    let n = 200usize;
    let s = Stream::new(5, Purpose::Test, 0);
    let x: Vec<f32> = (0..n as u64).map(|i| 1.0 + s.uniform(i)).collect();
    for seed in 0..3 {
        // racecheck reports this kernel outright (tests/sim_checks.rs); here the shuffle alone
        let dev = sim_unchecked(seed);
        let dx = dev.htod(&x).unwrap();
        let out = dev.alloc_zeros::<f32>(n).unwrap();
        // with the barrier: right in any order
        dev.launch(
            "shim_with_barrier",
            1u32,
            n as u32,
            0,
            &[(&out).into(), (&dx).into(), (n as i32).into()],
        )
        .unwrap();
        assert_eq!(dev.dtoh(&out).unwrap(), rotate(&x));
        // without: some thread reads its neighbour's slot before it is written
        dev.launch(
            "shim_missing_barrier",
            1u32,
            n as u32,
            4 * n as u32,
            &[(&out).into(), (&dx).into(), (n as i32).into()],
        )
        .unwrap();
        assert_ne!(
            dev.dtoh(&out).unwrap(),
            rotate(&x),
            "seed {seed}: missing barrier not detected"
        );
    }
}

#[test]
fn barrier_divergence_is_an_error_naming_the_kernel() {
    let dev = sim(true, 1);
    let out = dev.alloc_zeros::<f32>(1).unwrap();
    let e = dev
        .launch(
            "shim_divergent_barrier",
            2u32,
            64u32,
            0,
            &[(&out).into(), 5i32.into()],
        )
        .unwrap_err();
    let msg = format!("{e:#}");
    assert!(
        msg.contains("shim_divergent_barrier") && msg.contains("barrier divergence"),
        "{msg}"
    );
}

#[test]
fn warp_collectives() {
    let dev = sim(true, 3);
    let n = 64 * 3 - 10; // last warp partly past n: those lanes still take part with v = 0
    let s = Stream::new(6, Purpose::Test, 0);
    let x: Vec<i32> = (0..n as u64).map(|i| s.below(i, 21) as i32 - 5).collect();
    let dx = dev.htod(&x).unwrap();
    let out = dev.alloc_zeros::<i32>(8 * n).unwrap();
    dev.launch(
        "shim_warp_ops",
        blocks_for(n, 64),
        64u32,
        0,
        &[(&out).into(), (&dx).into(), (n as i32).into()],
    )
    .unwrap();
    let o = dev.dtoh(&out).unwrap();
    let v = |t: usize| if t < n { x[t] } else { 0 };
    for t in 0..n {
        let (w, l) = (t / 32 * 32, t % 32);
        let lane = |j: usize| v(w + j);
        let ballot: u32 = (0..32).filter(|&j| lane(j) > 0).map(|j| 1u32 << j).sum();
        let want = [
            lane(3),
            if l >= 1 { lane(l - 1) } else { lane(l) },
            if l + 2 < 32 { lane(l + 2) } else { lane(l) },
            lane(l ^ 5),
            ballot as i32,
            (ballot != 0) as i32,
            (ballot == u32::MAX) as i32,
            (0..32).map(lane).sum(),
        ];
        assert_eq!(&o[8 * t..8 * t + 8], &want, "thread {t}");
    }
}

#[test]
fn syncthreads_count_and_or() {
    let dev = sim(true, 4);
    for (x, want) in [
        (vec![1, 0, 3, -1, 2], [3, 0, 1]),
        (vec![1, 1, 1], [3, 1, 1]),
        (vec![0, 0], [0, 0, 0]),
    ] {
        let n = x.len();
        let dx = dev.htod(&x).unwrap();
        let out = dev.alloc_zeros::<i32>(3).unwrap();
        dev.launch(
            "shim_sync_count",
            1u32,
            n as u32,
            0,
            &[(&out).into(), (&dx).into(), (n as i32).into()],
        )
        .unwrap();
        assert_eq!(dev.dtoh(&out).unwrap(), want, "x = {x:?}");
    }
}

#[test]
fn atomics_across_blocks() {
    let dev = sim(true, 5);
    let n = 5000usize;
    let s = Stream::new(8, Purpose::Test, 0);
    let x: Vec<i32> = (0..n as u64)
        .map(|i| s.below(i, 2001) as i32 - 1000)
        .collect();
    let dx = dev.htod(&x).unwrap();
    let counters = dev.htod(&[0, i32::MIN, i32::MAX]).unwrap();
    let fsum = dev.htod(&[0.0f32, f32::NEG_INFINITY]).unwrap();
    dev.launch(
        "shim_atomics",
        blocks_for(n, 96),
        96u32,
        0,
        &[
            (&counters).into(),
            (&fsum).into(),
            (&dx).into(),
            (n as i32).into(),
        ],
    )
    .unwrap();
    let c = dev.dtoh(&counters).unwrap();
    assert_eq!(
        c,
        vec![n as i32, *x.iter().max().unwrap(), *x.iter().min().unwrap()]
    );
    let f = dev.dtoh(&fsum).unwrap();
    // integers summed in f32: exact while partial sums stay below 2^24 (|sum| <= 5e6 < 1.6e7)
    assert_eq!(f[0], x.iter().sum::<i32>() as f32);
    assert_eq!(f[1], *x.iter().max().unwrap() as f32);
}

#[test]
fn failed_assertion_is_an_error() {
    let dev = sim(false, 0);
    let x = dev.htod(&[1.0f32, 2.0, -3.0, 4.0]).unwrap();
    let e = dev
        .launch("shim_assert", 1u32, 32u32, 0, &[(&x).into(), 4i32.into()])
        .unwrap_err();
    let msg = format!("{e:#}");
    assert!(
        msg.contains("shim_assert")
            && msg.contains("SER_ASSERT failed")
            && msg.contains("thread 2,0,0"),
        "{msg}"
    );
    let ok = dev.htod(&[1.0f32, 2.0]).unwrap();
    dev.launch("shim_assert", 1u32, 32u32, 0, &[(&ok).into(), 2i32.into()])
        .unwrap();
}

#[test]
fn concurrent_launches_from_many_threads() {
    let handles: Vec<_> = (0..6)
        .map(|t| {
            std::thread::spawn(move || {
                let dev = sim(true, t);
                let n = 300 + 37 * t as usize;
                let x: Vec<f32> = (0..n).map(|i| i as f32 + t as f32).collect();
                for _ in 0..5 {
                    let dx = dev.htod(&x).unwrap();
                    let out = dev.alloc_zeros::<f32>(n.min(256)).unwrap();
                    let m = n.min(256);
                    dev.launch(
                        "shim_with_barrier",
                        1u32,
                        m as u32,
                        0,
                        &[(&out).into(), (&dx).into(), (m as i32).into()],
                    )
                    .unwrap();
                    assert_eq!(dev.dtoh(&out).unwrap(), rotate(&x[..m]));
                    let mut d = dev.htod(&x).unwrap();
                    ser_engine::device::ops::scale(&dev, &mut d, 2.0).unwrap();
                    assert_eq!(
                        dev.dtoh(&d).unwrap(),
                        x.iter().map(|v| v * 2.0).collect::<Vec<_>>()
                    );
                }
            })
        })
        .collect();
    for h in handles {
        h.join().unwrap();
    }
}

#[test]
fn out_of_bounds_write_is_reported() {
    let dev = sim(true, 0);
    let x = dev.alloc_zeros::<f32>(37).unwrap();
    let e = dev
        .launch(
            "shim_oob_write",
            1u32,
            32u32,
            0,
            &[(&x).into(), 37i32.into()],
        )
        .unwrap_err();
    let msg = format!("{e:#}");
    assert!(
        msg.contains("shim_oob_write") && msg.contains("past the end of buffer 'x'"),
        "{msg}"
    );
    // within bounds (n = 36 writes x[36]) is fine
    dev.launch(
        "shim_oob_write",
        1u32,
        32u32,
        0,
        &[(&x).into(), 36i32.into()],
    )
    .unwrap();
    assert_eq!(dev.dtoh(&x).unwrap()[36], 1.0);
}

#[test]
fn full_mask_on_a_partial_warp_is_an_error() {
    // 48 threads: the second warp has 16 lanes, so a 0xffffffff mask names lanes that do not
    // exist (undefined behaviour on a GPU) and must be reported, not hang.
    let dev = sim(true, 0);
    let n = 48usize;
    let x = dev.htod(&vec![1i32; n]).unwrap();
    let out = dev.alloc_zeros::<i32>(8 * n).unwrap();
    let e = dev
        .launch(
            "shim_warp_ops",
            1u32,
            n as u32,
            0,
            &[(&out).into(), (&x).into(), (n as i32).into()],
        )
        .unwrap_err();
    let msg = format!("{e:#}");
    assert!(
        msg.contains("shim_warp_ops") && msg.contains("does not exist"),
        "{msg}"
    );
}
