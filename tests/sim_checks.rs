//! The sim's checks against planted bugs (kernels/test_shim.cu): racecheck (shared memory,
//! global memory within a block, plain writes from two blocks), initcheck (reads of device
//! memory nothing wrote since `alloc_uninit`) and the launch limits of the target GPUs. Each
//! test fails if its check does not report its bug, and runs the bug-free twin to show the
//! check does not fire without it.

use ser_engine::device::{kernels, limits, AsView, Device, SimDevice, SimOptions};

fn sim(checks: bool, seed: u64) -> Device {
    Device::Sim(SimDevice::with_options(SimOptions {
        shuffle: true,
        seed,
        workers: 0,
        checks,
    }))
}

fn err_of(r: anyhow::Result<()>) -> String {
    format!(
        "{:#}",
        r.expect_err("the check did not report the planted bug")
    )
}

fn has_all(msg: &str, parts: &[&str]) {
    for p in parts {
        assert!(msg.contains(p), "'{p}' missing from: {msg}");
    }
}

#[test]
fn race_missing_barrier_with_order_independent_result() {
    let n = 77usize;
    let x: Vec<f32> = (0..n).map(|i| 0.5 + i as f32).collect();
    let want: Vec<f32> = (0..n).map(|t| x[(t + 1) % n] + x[t]).collect();
    for seed in 0..3 {
        // the bug does not change the result in any thread order: without racecheck it passes
        let dev = sim(false, seed);
        let dx = dev.htod(&x).unwrap();
        let out = dev.alloc_zeros::<f32>(n).unwrap();
        let args = [(&out).into(), (&dx).into(), (n as i32).into()];
        dev.launch("race_missing_barrier_same_values", 1u32, n as u32, 0, &args)
            .unwrap();
        assert_eq!(dev.dtoh(&out).unwrap(), want, "seed {seed}");
        let dev = sim(true, seed);
        let dx = dev.htod(&x).unwrap();
        let out = dev.alloc_zeros::<f32>(n).unwrap();
        let args = [(&out).into(), (&dx).into(), (n as i32).into()];
        let msg = err_of(dev.launch("race_missing_barrier_same_values", 1u32, n as u32, 0, &args));
        has_all(
            &msg,
            &[
                "race_missing_barrier_same_values",
                // which pair comes first depends on the shuffled order: the re-store after a
                // neighbour's load (write-after-read) or that load after the re-store
                "race on static __shared__ memory",
                "(block 0,0,0)",
                " read it",
                " wrote it",
            ],
        );
    }
    if !ser_engine::device::sim::static_shared_checked() {
        panic!("racecheck cannot see static __shared__ variables on this platform");
    }
}

#[test]
fn race_nonatomic_increment_of_a_global_counter() {
    let dev = sim(true, 1);
    // one block: its threads run between barriers without preemption, so the sum is exact
    // without racecheck; with it the read-modify-write is a race
    let count = dev.alloc_zeros::<i32>(1).unwrap();
    let msg = err_of(dev.launch(
        "race_nonatomic_increment",
        1u32,
        64u32,
        0,
        &[(&count).into(), 0i32.into()],
    ));
    has_all(
        &msg,
        &[
            "race_nonatomic_increment",
            "racecheck: read-after-write race on global memory, buffer 'count' element 0",
            "(block 0,0,0)",
        ],
    );
    // one thread per block, eight blocks: plain writes of one word from different blocks
    let count = dev.alloc_zeros::<i32>(1).unwrap();
    let msg = err_of(dev.launch(
        "race_nonatomic_increment",
        8u32,
        1u32,
        0,
        &[(&count).into(), 0i32.into()],
    ));
    has_all(
        &msg,
        &[
            "racecheck: write-write race on global memory, buffer 'count' element 0",
            "both wrote it (plain stores) in one launch",
        ],
    );
    // atomics are not races
    let count = dev.alloc_zeros::<i32>(1).unwrap();
    dev.launch(
        "race_nonatomic_increment",
        8u32,
        64u32,
        0,
        &[(&count).into(), 1i32.into()],
    )
    .unwrap();
    assert_eq!(dev.dtoh(&count).unwrap(), [512]);
}

#[test]
fn race_nonatomic_increment_of_a_shared_counter() {
    let dev = sim(true, 2);
    let out = dev.alloc_zeros::<i32>(3).unwrap();
    let msg = err_of(dev.launch(
        "race_nonatomic_shared_increment",
        3u32,
        96u32,
        0,
        &[(&out).into(), 0i32.into()],
    ));
    has_all(
        &msg,
        &[
            "race_nonatomic_shared_increment",
            "racecheck: read-after-write race on static __shared__ memory",
        ],
    );
    dev.launch(
        "race_nonatomic_shared_increment",
        3u32,
        96u32,
        0,
        &[(&out).into(), 1i32.into()],
    )
    .unwrap();
    assert_eq!(dev.dtoh(&out).unwrap(), [96, 96, 96]);
}

#[test]
fn race_across_warps_is_not_ordered_by_syncwarp() {
    let n = 96usize;
    let x: Vec<f32> = (0..n).map(|i| i as f32 * 0.25).collect();
    let dev = sim(true, 3);
    let dx = dev.htod(&x).unwrap();
    let out = dev.alloc_zeros::<f32>(n).unwrap();
    let run = |dist: i32, warp_sync: i32| {
        dev.launch(
            "race_warp_staged",
            1u32,
            n as u32,
            4 * n as u32,
            &[
                (&out).into(),
                (&dx).into(),
                (n as i32).into(),
                dist.into(),
                warp_sync.into(),
            ],
        )
    };
    // within a warp, __syncwarp orders the store before the neighbour's load
    run(5, 1).unwrap();
    let o = dev.dtoh(&out).unwrap();
    for t in 0..n {
        assert_eq!(o[t], x[(t & !31) | ((t + 5) & 31)], "thread {t}");
    }
    // without it, a race within the warp
    let msg = err_of(run(5, 0));
    has_all(
        &msg,
        &[
            "race_warp_staged",
            "race on dynamic shared memory, byte offset",
        ],
    );
    // across warps __syncwarp orders nothing
    let msg = err_of(run(40, 1));
    has_all(
        &msg,
        &[
            "race_warp_staged",
            "race on dynamic shared memory, byte offset",
        ],
    );
}

#[test]
fn uninit_read_of_an_unwritten_buffer() {
    // thread order, so the first unwritten element read is the lowest one
    let dev = Device::Sim(SimDevice::with_options(SimOptions {
        shuffle: false,
        seed: 0,
        workers: 1,
        checks: true,
    }));
    let n = 50usize;
    let out = dev.alloc_zeros::<f32>(n).unwrap();
    let x = dev.alloc_uninit::<f32>(n).unwrap();
    let msg = err_of(dev.launch(
        "uninit_copy",
        2u32,
        32u32,
        0,
        &[(&out).into(), (&x).into(), (n as i32).into()],
    ));
    has_all(
        &msg,
        &[
            "uninit_copy",
            "initcheck: thread (",
            "read buffer 'x' element ",
            "nothing has written since it was allocated",
        ],
    );
    // a kernel writes the first 30 elements; reading 40 of them fails at element 30 exactly
    let mut x = dev.alloc_uninit::<f32>(n).unwrap();
    let src = dev.htod(&[2.0f32; 30]).unwrap();
    {
        let head = x.slice_mut(0..30).unwrap();
        let args = [AsView::view(&head).into(), (&src).into(), 30i32.into()];
        dev.launch("uninit_copy", 1u32, 32u32, 0, &args).unwrap();
    }
    dev.launch(
        "uninit_copy",
        1u32,
        32u32,
        0,
        &[(&out).into(), x.slice(0..30).unwrap().into(), 30i32.into()],
    )
    .unwrap();
    assert_eq!(dev.dtoh(&out).unwrap()[..30], [2.0f32; 30]);
    let msg = err_of(dev.launch(
        "uninit_copy",
        1u32,
        64u32,
        0,
        &[(&out).into(), x.slice(0..40).unwrap().into(), 40i32.into()],
    ));
    has_all(&msg, &["read buffer 'x' element 30,"]);
    // through a view starting at 20: element 30 of the buffer is element 10 of the view
    let msg = err_of(dev.launch(
        "uninit_copy",
        1u32,
        32u32,
        0,
        &[(&out).into(), x.slice(20..45).unwrap().into(), 25i32.into()],
    ));
    has_all(
        &msg,
        &["buffer 'x' element 30 (element 10 of the argument's view)"],
    );
    // a host copy writes everything
    dev.copy_htod(&vec![1.0f32; n], &mut x).unwrap();
    dev.launch(
        "uninit_copy",
        2u32,
        32u32,
        0,
        &[(&out).into(), (&x).into(), (n as i32).into()],
    )
    .unwrap();
    // zeroed allocations are written (cuda memsets them), so the existing kernels never trip
    let z = dev.alloc_zeros::<f32>(n).unwrap();
    dev.launch(
        "uninit_copy",
        2u32,
        32u32,
        0,
        &[(&out).into(), (&z).into(), (n as i32).into()],
    )
    .unwrap();
}

#[test]
fn uninit_read_after_the_allocator_reused_freed_memory() {
    let dev = sim(true, 5);
    let n = 4096usize;
    let out = dev.alloc_zeros::<f32>(n).unwrap();
    for _ in 0..3 {
        // written, freed, and allocated again (the host allocator hands back the same block)
        let mut x = dev.alloc_uninit::<f32>(n).unwrap();
        dev.copy_htod(&vec![3.0f32; n], &mut x).unwrap();
        drop(x);
        let y = dev.alloc_uninit::<f32>(n).unwrap();
        let msg = err_of(dev.launch(
            "uninit_copy",
            32u32,
            128u32,
            0,
            &[(&out).into(), (&y).into(), (n as i32).into()],
        ));
        has_all(&msg, &["initcheck", "buffer 'x' element"]);
    }
}

#[test]
fn limit_block_too_large_for_the_register_file() {
    let rows: Vec<_> = limits::resource_use("limit_many_registers").collect();
    assert!(
        !rows.is_empty(),
        "no ptxas numbers for kernels/test_shim.cu ({}): build once with nvcc to refresh tools/launch-limits.txt",
        kernels::LAUNCH_LIMITS_STATUS
    );
    for r in &rows {
        assert!(
            r.registers > 64,
            "the planted kernel uses only {} registers on {}",
            r.registers,
            r.arch
        );
    }
    let dev = sim(true, 6);
    let x = dev.htod(&vec![0.01f32; 64]).unwrap();
    let out = dev.alloc_zeros::<f32>(1024).unwrap();
    let msg = err_of(dev.launch(
        "limit_many_registers",
        1u32,
        1024u32,
        0,
        &[(&out).into(), (&x).into()],
    ));
    has_all(
        &msg,
        &[
            "limit_many_registers",
            "a block of 1024 threads",
            "registers",
            "a GPU refuses this launch",
        ],
    );
    // 256 threads fit
    dev.launch(
        "limit_many_registers",
        1u32,
        256u32,
        0,
        &[(&out).into(), (&x).into()],
    )
    .unwrap();
    // with checks off too: the limits hold on every launch
    let dev = sim(false, 6);
    let x = dev.htod(&vec![0.01f32; 64]).unwrap();
    let out = dev.alloc_zeros::<f32>(1024).unwrap();
    err_of(dev.launch(
        "limit_many_registers",
        1u32,
        1024u32,
        0,
        &[(&out).into(), (&x).into()],
    ));
}

#[test]
fn limit_64k_dynamic_shared_without_the_opt_in() {
    let dev = sim(true, 7);
    let out = dev.alloc_zeros::<f32>(32).unwrap();
    let bytes = 64 * 1024u32;
    let msg = err_of(dev.launch(
        "limit_shared_no_opt_in",
        1u32,
        32u32,
        bytes,
        &[(&out).into(), (bytes as i32).into()],
    ));
    has_all(
        &msg,
        &[
            "limit_shared_no_opt_in",
            "over the 49152 a block gets without the opt-in",
            "max-dynamic-shared",
        ],
    );
    // 48 KiB is fine without it
    let small = 48 * 1024u32;
    dev.launch(
        "limit_shared_no_opt_in",
        1u32,
        32u32,
        small,
        &[(&out).into(), (small as i32).into()],
    )
    .unwrap();
    assert_eq!(dev.dtoh(&out).unwrap(), vec![(small / 4) as f32; 32]);
    // the twin that declares the opt-in runs with 64 KiB, but not with more than it declared
    dev.launch(
        "limit_shared_opt_in",
        1u32,
        32u32,
        bytes,
        &[(&out).into(), (bytes as i32).into()],
    )
    .unwrap();
    assert_eq!(dev.dtoh(&out).unwrap(), vec![(bytes / 4) as f32; 32]);
    let more = bytes + 4;
    let msg = err_of(dev.launch(
        "limit_shared_opt_in",
        1u32,
        32u32,
        more,
        &[(&out).into(), (more as i32).into()],
    ));
    has_all(
        &msg,
        &["more than the 65536 its `// max-dynamic-shared:` line opts in to"],
    );
}

#[test]
fn every_kernel_has_launch_limits() {
    // the committed table must cover every kernel (tools/launch-limits.txt; stale after a
    // kernel edit until a build with nvcc refreshes it)
    let missing: Vec<&str> = kernels::KERNELS
        .iter()
        .map(|k| k.name)
        .filter(|k| limits::resource_use(k).next().is_none())
        .collect();
    assert!(
        missing.is_empty(),
        "no ptxas register/shared numbers for {missing:?} ({}): build once with nvcc",
        kernels::LAUNCH_LIMITS_STATUS
    );
    assert!(
        limits::target_archs().len() >= 2,
        "{:?}",
        limits::target_archs()
    );
}
