//! Per-kernel profiling of device work, a per-thread switch: while [`start`]ed, every kernel
//! launch, GEMM and cuDNN convolution this thread asks of a device is run synchronously
//! (`synchronize` before and after) and recorded with its name, the current [`phase`], its
//! elapsed wall time and its analytic [`Cost`] (FLOP and minimum DRAM bytes, from
//! [`super::cost`]). [`summarize`] folds the records of some training steps into a per-kernel
//! table (launches per step, time share, GFLOP/s, GB/s, FLOP/byte) and the step totals.
//!
//! [`start_cost_only`] records the same operations with their costs but does NOT execute them
//! (seconds 0): the launch sequence and shapes do not depend on the data, so this gives the
//! analytic FLOP and bytes of a step too large to run on sim in reasonable time. Whatever the
//! step computes meanwhile is garbage: use a throwaway model.
//!
//! Off (the default) the only cost on the launch path is reading a thread-local flag, and
//! [`phase`] sets a thread-local `&'static str`: no allocation, no synchronization.
//!
//! On cuda the times are host wall time around a synchronized launch: they include launch
//! latency (a few µs), which is part of what the step pays for a small kernel. On sim they are
//! the CPU time of the emulation, not GPU times; only the FLOP and byte columns carry over.
//!
//! Layer: device, the lowest (used by engine and above). May use the shared modules (`rng`,
//! `isa`, `cache`, `atomic_file`) only.

use std::cell::{Cell, RefCell};
use std::fmt::Write as _;
use std::time::Instant;

use anyhow::Result;

pub use super::cost::Cost;
use super::Device;

/// One profiled device operation.
#[derive(Clone, Debug, PartialEq)]
pub struct Record {
    /// Kernel name (`kernels/*.cu`) or library operation ([`super::cost::LIBRARY_OPS`]).
    pub name: &'static str,
    /// The [`phase`] current when it ran.
    pub phase: &'static str,
    /// Wall seconds from launch to completion.
    pub seconds: f64,
    /// Analytic cost; None for a kernel the cost model does not cover.
    pub cost: Option<Cost>,
}

/// What this thread does with device operations.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Mode {
    Off,
    Timed,
    CostOnly,
}

thread_local! {
    static ON: Cell<Mode> = const { Cell::new(Mode::Off) };
    static PHASE: Cell<&'static str> = const { Cell::new("-") };
    static RECORDS: RefCell<Vec<Record>> = const { RefCell::new(Vec::new()) };
}

/// Starts recording this thread's device operations (earlier records are dropped).
pub fn start() {
    RECORDS.with(|r| r.borrow_mut().clear());
    ON.with(|o| o.set(Mode::Timed));
}

/// Starts recording this thread's device operations with their costs, without executing them
/// (see the module doc); [`stop`] ends it.
pub fn start_cost_only() {
    RECORDS.with(|r| r.borrow_mut().clear());
    ON.with(|o| o.set(Mode::CostOnly));
}

/// Stops recording and returns the records since [`start`], in launch order.
pub fn stop() -> Vec<Record> {
    ON.with(|o| o.set(Mode::Off));
    RECORDS.with(|r| std::mem::take(&mut *r.borrow_mut()))
}

/// Whether this thread is recording.
pub fn is_on() -> bool {
    ON.with(|o| o.get()) != Mode::Off
}

/// Restores the previous phase when dropped.
pub struct PhaseGuard(&'static str);
impl Drop for PhaseGuard {
    fn drop(&mut self) {
        PHASE.with(|p| p.set(self.0));
    }
}

/// Labels this thread's device operations with `name` until the guard drops (e.g. "cnn fwd"),
/// so a table can tell the forward's GEMMs from the backward's.
#[must_use = "the phase ends when the guard drops"]
pub fn phase(name: &'static str) -> PhaseGuard {
    PhaseGuard(PHASE.with(|p| p.replace(name)))
}

/// Runs device operation `f` on `dev`; while profiling, synchronized and recorded as `name`
/// with `cost()` (not evaluated when off); in cost-only mode recorded and not run.
pub(crate) fn op(
    dev: &Device,
    name: &'static str,
    cost: impl FnOnce() -> Option<Cost>,
    f: impl FnOnce() -> Result<()>,
) -> Result<()> {
    let mode = ON.with(|o| o.get());
    if mode == Mode::Off {
        return f();
    }
    let cost = cost();
    let seconds = if mode == Mode::CostOnly {
        0.0
    } else {
        // earlier queued work must not be billed to this operation
        dev.synchronize()?;
        let t0 = Instant::now();
        f()?;
        dev.synchronize()?;
        t0.elapsed().as_secs_f64()
    };
    let phase = PHASE.with(|p| p.get());
    RECORDS.with(|v| {
        v.borrow_mut().push(Record {
            name,
            phase,
            seconds,
            cost,
        })
    });
    Ok(())
}

/// One row of a [`Summary`]: a kernel within a phase, per step.
#[derive(Clone, Debug, PartialEq)]
pub struct Row {
    pub phase: &'static str,
    pub name: &'static str,
    /// Launches per step.
    pub launches: f64,
    /// Seconds per step.
    pub seconds: f64,
    /// FLOP per step (0 where not modeled).
    pub flops: f64,
    /// Minimum DRAM bytes per step (0 where not modeled).
    pub bytes: f64,
    /// Whether every launch of the row had a cost.
    pub modeled: bool,
}

/// Per-step profile of `steps` steps' records: rows in order of first launch, and totals.
#[derive(Clone, Debug, PartialEq)]
pub struct Summary {
    pub steps: usize,
    pub rows: Vec<Row>,
    /// Launches, seconds, FLOP and bytes per step, all rows together.
    pub launches: f64,
    pub seconds: f64,
    pub flops: f64,
    pub bytes: f64,
}

/// Folds records of `steps` identical steps (≥ 1) into per-step rows, one per (phase, kernel).
pub fn summarize(records: &[Record], steps: usize) -> Summary {
    let s = steps.max(1) as f64;
    let mut rows: Vec<Row> = Vec::new();
    for r in records {
        let i = match rows
            .iter()
            .position(|w| w.phase == r.phase && w.name == r.name)
        {
            Some(i) => i,
            None => {
                rows.push(Row {
                    phase: r.phase,
                    name: r.name,
                    launches: 0.0,
                    seconds: 0.0,
                    flops: 0.0,
                    bytes: 0.0,
                    modeled: true,
                });
                rows.len() - 1
            }
        };
        let w = &mut rows[i];
        w.launches += 1.0 / s;
        w.seconds += r.seconds / s;
        match r.cost {
            Some(c) => {
                w.flops += c.flops / s;
                w.bytes += c.bytes / s;
            }
            None => w.modeled = false,
        }
    }
    let sum = |f: fn(&Row) -> f64| rows.iter().map(f).sum::<f64>();
    Summary {
        steps: steps.max(1),
        launches: sum(|r| r.launches),
        seconds: sum(|r| r.seconds),
        flops: sum(|r| r.flops),
        bytes: sum(|r| r.bytes),
        rows,
    }
}

/// `v / t` as a rate, or 0 for no time (an unmeasurably short or absent operation).
fn rate(v: f64, t: f64) -> f64 {
    if t > 0.0 {
        v / t
    } else {
        0.0
    }
}

impl Summary {
    /// The table: per (phase, kernel) launches per step, time per step and its share, MFLOP,
    /// MB, GFLOP/s, GB/s and FLOP/byte; then the step totals. `-` marks a kernel without a
    /// cost model.
    pub fn table(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(
            out,
            "{:<9} {:<26} {:>7} {:>10} {:>6} {:>11} {:>10} {:>9} {:>8} {:>7}",
            "phase",
            "kernel",
            "launch",
            "ms/step",
            "time%",
            "MFLOP",
            "MB",
            "GFLOP/s",
            "GB/s",
            "FLOP/B"
        );
        for r in &self.rows {
            let share = 100.0 * rate(r.seconds, self.seconds);
            if r.modeled {
                let _ = writeln!(
                    out,
                    "{:<9} {:<26} {:>7.1} {:>10.3} {:>6.1} {:>11.3} {:>10.3} {:>9.2} {:>8.2} {:>7.2}",
                    r.phase,
                    r.name,
                    r.launches,
                    r.seconds * 1e3,
                    share,
                    r.flops / 1e6,
                    r.bytes / 1e6,
                    rate(r.flops, r.seconds) / 1e9,
                    rate(r.bytes, r.seconds) / 1e9,
                    rate(r.flops, r.bytes)
                );
            } else {
                let _ = writeln!(
                    out,
                    "{:<9} {:<26} {:>7.1} {:>10.3} {:>6.1} {:>11} {:>10} {:>9} {:>8} {:>7}",
                    r.phase,
                    r.name,
                    r.launches,
                    r.seconds * 1e3,
                    share,
                    "-",
                    "-",
                    "-",
                    "-",
                    "-"
                );
            }
        }
        let _ = writeln!(
            out,
            "{:<9} {:<26} {:>7.1} {:>10.3} {:>6.1} {:>11.3} {:>10.3} {:>9.2} {:>8.2} {:>7.2}",
            "step",
            "total",
            self.launches,
            self.seconds * 1e3,
            100.0,
            self.flops / 1e6,
            self.bytes / 1e6,
            rate(self.flops, self.seconds) / 1e9,
            rate(self.bytes, self.seconds) / 1e9,
            rate(self.flops, self.bytes)
        );
        out
    }
}

impl Summary {
    /// The table without times (for [`start_cost_only`] records): per (phase, kernel)
    /// launches per step, MFLOP, MB and FLOP/byte, and the step totals.
    pub fn cost_table(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(
            out,
            "{:<9} {:<26} {:>7} {:>12} {:>10} {:>7}",
            "phase", "kernel", "launch", "MFLOP", "MB", "FLOP/B"
        );
        let line = |out: &mut String, phase: &str, name: &str, l: f64, f: f64, b: f64, ok: bool| {
            if ok {
                let _ = writeln!(
                    out,
                    "{phase:<9} {name:<26} {l:>7.1} {:>12.3} {:>10.3} {:>7.2}",
                    f / 1e6,
                    b / 1e6,
                    rate(f, b)
                );
            } else {
                let _ = writeln!(
                    out,
                    "{phase:<9} {name:<26} {l:>7.1} {:>12} {:>10} {:>7}",
                    "-", "-", "-"
                );
            }
        };
        for r in &self.rows {
            line(
                &mut out, r.phase, r.name, r.launches, r.flops, r.bytes, r.modeled,
            );
        }
        line(
            &mut out,
            "step",
            "total",
            self.launches,
            self.flops,
            self.bytes,
            true,
        );
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(name: &'static str, phase: &'static str, seconds: f64, cost: Option<Cost>) -> Record {
        Record {
            name,
            phase,
            seconds,
            cost,
        }
    }

    #[test]
    fn summarize_folds_per_step_and_keeps_totals() {
        let c = |flops, bytes| Some(Cost { flops, bytes });
        // two steps of: a (fwd) twice, b (fwd), a (bwd)
        let mut v = Vec::new();
        for _ in 0..2 {
            v.push(rec("a", "fwd", 1.0, c(10.0, 4.0)));
            v.push(rec("b", "fwd", 2.0, None));
            v.push(rec("a", "fwd", 3.0, c(20.0, 8.0)));
            v.push(rec("a", "bwd", 4.0, c(1.0, 1.0)));
        }
        let s = summarize(&v, 2);
        let names: Vec<_> = s.rows.iter().map(|r| (r.phase, r.name)).collect();
        assert_eq!(names, [("fwd", "a"), ("fwd", "b"), ("bwd", "a")]);
        let a = &s.rows[0];
        // per step: 2 launches, 4 s, 30 FLOP, 12 bytes (exact in binary fractions)
        assert_eq!(
            (a.launches, a.seconds, a.flops, a.bytes),
            (2.0, 4.0, 30.0, 12.0)
        );
        assert!(a.modeled && !s.rows[1].modeled);
        assert_eq!(
            (s.launches, s.seconds, s.flops, s.bytes),
            (4.0, 10.0, 31.0, 13.0)
        );
        for t in [s.table(), s.cost_table()] {
            assert_eq!(t.lines().count(), 1 + 3 + 1, "{t}");
            assert!(t.lines().nth(2).unwrap().contains(" - "), "{t}");
            assert!(!t.lines().nth(1).unwrap().contains(" - "), "{t}");
        }
    }

    #[test]
    fn recording_is_per_thread_and_off_by_default() {
        let dev = Device::sim();
        assert!(!is_on());
        let mut buf = dev.alloc_zeros::<f32>(300).unwrap();
        let run = |buf: &mut crate::device::DeviceBuffer<f32>| {
            dev.launch(
                "scale",
                crate::device::blocks_for(300, 128),
                128u32,
                0,
                &[(&*buf).into(), 2.0f32.into(), 300i32.into()],
            )
            .unwrap()
        };
        run(&mut buf);
        start();
        {
            let _g = phase("p1");
            run(&mut buf);
        }
        run(&mut buf);
        // another thread's launches are not this thread's records
        std::thread::scope(|s| {
            s.spawn(|| {
                let d = Device::sim();
                let b = d.alloc_zeros::<f32>(10).unwrap();
                d.launch(
                    "scale",
                    1u32,
                    32u32,
                    0,
                    &[(&b).into(), 1.0f32.into(), 10i32.into()],
                )
                .unwrap();
            });
        });
        let r = stop();
        assert!(!is_on());
        assert_eq!(r.len(), 2, "{r:?}");
        assert_eq!((r[0].name, r[0].phase), ("scale", "p1"));
        assert_eq!((r[1].name, r[1].phase), ("scale", "-"));
        // scale: one multiply, one read and one write per element
        assert_eq!(
            r[0].cost,
            Some(Cost {
                flops: 300.0,
                bytes: 2400.0
            })
        );
        assert!(r.iter().all(|x| x.seconds >= 0.0));
        run(&mut buf);
        assert!(stop().is_empty(), "records after stop");
    }
}
