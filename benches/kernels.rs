//! Per-kernel throughput on sim (always) and cuda (SER_BENCH_DEVICE=cuda, on a GPU machine).
//! `cargo bench --bench kernels`.
use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use ser_engine::device::{ops, CudaDevice, Device, SimDevice, SimOptions, Transpose};

fn devices() -> Vec<(&'static str, Device)> {
    let mut v = vec![(
        "sim",
        Device::Sim(SimDevice::with_options(SimOptions {
            shuffle: false,
            ..SimOptions::default()
        })),
    )];
    if std::env::var("SER_BENCH_DEVICE").as_deref() == Ok("cuda") {
        match CudaDevice::new(0) {
            Ok(c) => v.push(("cuda", Device::Cuda(c))),
            Err(e) => eprintln!("skipping cuda: {e:#}"),
        }
    }
    v
}

fn bench(c: &mut Criterion) {
    for (name, dev) in devices() {
        let n = 1 << 16;
        let x: Vec<f32> = (0..n).map(|i| (i % 17) as f32 - 8.0).collect();
        let dx = dev.htod(&x).unwrap();
        let mut dy = dev.htod(&x).unwrap();
        let mut g = c.benchmark_group(format!("{name}/elementwise"));
        g.throughput(Throughput::Elements(n as u64));
        g.sample_size(10);
        g.bench_function("axpy 65536", |b| {
            b.iter(|| {
                ops::axpy(&dev, &mut dy, 0.5, &dx).unwrap();
                dev.synchronize().unwrap()
            })
        });
        g.bench_function("reduce_sum 65536", |b| {
            b.iter(|| ops::reduce_sum(&dev, &dx).unwrap())
        });
        g.finish();
        let s = 128usize;
        let a = dev.htod(&vec![0.5f32; s * s]).unwrap();
        let bm = dev.htod(&vec![0.25f32; s * s]).unwrap();
        let mut cm = dev.alloc_zeros::<f32>(s * s).unwrap();
        let mut g = c.benchmark_group(format!("{name}/sgemm"));
        g.throughput(Throughput::Elements((2 * s * s * s) as u64));
        g.sample_size(10);
        g.bench_function("sgemm nn 128", |b| {
            b.iter(|| {
                dev.gemm(
                    Transpose::N,
                    Transpose::N,
                    s,
                    s,
                    s,
                    1.0,
                    &a,
                    &bm,
                    0.0,
                    &mut cm,
                )
                .unwrap();
                dev.synchronize().unwrap()
            })
        });
        g.finish();
    }
}

criterion_group!(benches, bench);
criterion_main!(benches);
