//! Timings behind [`super::super::tune::conv_algo_model`]: `cargo test --release --lib
//! conv::fft::timing -- --ignored --nocapture` (f32, B = 16, all clips full length).

use super::super::direct::{conv2d_backward_direct, conv2d_forward_direct};
use super::super::shape::ConvShape;
use super::backward::conv2d_backward_fft;
use super::forward::conv2d_forward_fft;
use std::time::Instant;

fn best(mut f: impl FnMut()) -> f64 {
    f();
    (0..3)
        .map(|_| {
            let t = Instant::now();
            f();
            t.elapsed().as_secs_f64() * 1e3
        })
        .fold(f64::INFINITY, f64::min)
}

#[test]
#[ignore]
fn timing() {
    let shapes = [
        (1, 32, 7, 128, 126),
        (32, 64, 7, 64, 63),
        (64, 128, 7, 32, 31),
        (4, 8, 7, 64, 63),
        (8, 16, 7, 64, 63),
        (16, 16, 7, 64, 63),
        (16, 32, 7, 32, 31),
        (8, 8, 9, 64, 63),
        (8, 8, 5, 64, 63),
        (8, 16, 5, 32, 31),
        (32, 32, 5, 64, 63),
        (32, 64, 5, 64, 63),
        (64, 128, 5, 32, 31),
        (16, 16, 3, 64, 63),
        (32, 64, 3, 64, 63),
        (64, 128, 3, 32, 31),
    ];
    for (cin, cout, k, m, t) in shapes {
        let s = ConvShape {
            batch: 16,
            cin,
            cout,
            k,
            m,
            t,
        };
        let lens = vec![t; 16];
        let x: Vec<f32> = (0..s.x_len()).map(|i| (i % 7) as f32 - 3.0).collect();
        let w: Vec<f32> = (0..s.w_len()).map(|i| (i % 5) as f32 - 2.0).collect();
        let bias = vec![0.5f32; cout];
        let dy: Vec<f32> = (0..s.y_len()).map(|i| (i % 3) as f32 - 1.0).collect();
        let mut y = vec![0f32; s.y_len()];
        let mut dx = vec![0f32; s.x_len()];
        let mut dw = vec![0f32; s.w_len()];
        let mut db = vec![0f32; cout];
        let fd = best(|| conv2d_forward_direct(&x, &w, &bias, &lens, &s, &mut y));
        let ff = best(|| conv2d_forward_fft(&x, &w, &bias, &lens, &s, &mut y));
        let bd = best(|| {
            conv2d_backward_direct(&x, &w, &dy, &lens, &s, Some(&mut dx), &mut dw, &mut db)
        });
        let bf = best(|| {
            conv2d_backward_fft(
                None,
                &x,
                &w,
                &dy,
                &lens,
                &s,
                Some(&mut dx),
                &mut dw,
                &mut db,
            )
        });
        eprintln!(
            "{cin:>3}->{cout:<3} k{k} {m}x{t}: fwd direct {fd:7.2} ms fft {ff:7.2} ms | \
             bwd direct {bd:7.2} ms fft {bf:7.2} ms"
        );
    }
}
