//! The report of a finished plan, built from the units' result.json alone: mean ± std per
//! trial, cv.json and its charts (cv), results.{md,csv,json}, results.png and Table 3 (sweep).
//! Uses `units.rs`, `train::metrics` and `train::plot`.

use super::plan::{read_plan, PlanKind};
use super::units::{read_result, UnitResult};
use crate::chart::{self, Panel, Series};
use crate::train::metrics::{mean_std, Confusion, Scores};
use crate::train::plot::{compare_svg, confusion_png};
use crate::train::run::atomic_write;
use anyhow::{bail, Result};
use serde::{Deserialize, Serialize};
use std::path::Path;

/// Mean ± sample std over folds.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct MeanStd {
    pub mean: f64,
    pub std: f64,
}

pub(super) fn mean_std_of(results: &[UnitResult], f: fn(&Scores) -> f64) -> MeanStd {
    let (mean, std) = mean_std(&results.iter().map(|r| f(&r.scores)).collect::<Vec<_>>());
    MeanStd { mean, std }
}

/// One trial over its folds.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct TrialSummary {
    pub name: String,
    pub dir: String,
    pub settings: Vec<(String, String)>,
    pub seed: u64,
    pub parameters: usize,
    pub kernel_size: usize,
    pub ua: MeanStd,
    pub wa: MeanStd,
    pub micro_f1: MeanStd,
    pub macro_f1: MeanStd,
    /// Summed over folds.
    pub confusion: Confusion,
    pub train_seconds: f64,
    pub folds: Vec<UnitResult>,
}

/// The merged report of a plan (cv.json, results.json).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Report {
    pub kind: PlanKind,
    pub data: String,
    pub labels: Vec<String>,
    pub folds: usize,
    pub by_speaker: bool,
    pub within_fold: Option<String>,
    pub trials: Vec<TrialSummary>,
}

/// Builds the report from the result files; errors listing the units not finished yet.
pub fn collect(out: &Path) -> Result<Report> {
    let plan = read_plan(out)?;
    let mut missing = Vec::new();
    let mut trials = Vec::new();
    for (t, trial) in plan.trials.iter().enumerate() {
        let mut results = Vec::new();
        for k in 0..plan.folds {
            let dir = plan.unit_dir(out, t * plan.folds + k);
            match read_result(&dir)? {
                Some(r) => results.push(r),
                None => missing.push(dir.display().to_string()),
            }
        }
        if results.len() < plan.folds {
            continue;
        }
        let mut confusion = Confusion::new(plan.labels.len());
        for r in &results {
            confusion.merge(&r.confusion);
        }
        trials.push(TrialSummary {
            name: trial.name.clone(),
            dir: trial.dir.clone(),
            settings: trial.settings.clone(),
            seed: trial.seed,
            parameters: trial.parameters,
            kernel_size: trial.model.kernel,
            ua: mean_std_of(&results, |s| s.unweighted_accuracy),
            wa: mean_std_of(&results, |s| s.accuracy),
            micro_f1: mean_std_of(&results, |s| s.micro_f1),
            macro_f1: mean_std_of(&results, |s| s.macro_f1),
            confusion,
            train_seconds: results.iter().map(|r| r.train_seconds).sum(),
            folds: results,
        });
    }
    if !missing.is_empty() {
        let shown: Vec<&str> = missing.iter().take(5).map(String::as_str).collect();
        bail!(
            "{}: {} of {} units are not finished ({}{}); run the remaining shards (or the same \
             command again to resume) before merging",
            out.display(),
            missing.len(),
            plan.units(),
            shown.join(", "),
            if missing.len() > 5 { ", ..." } else { "" }
        );
    }
    Ok(Report {
        kind: plan.kind,
        data: plan.data,
        labels: plan.labels,
        folds: plan.folds,
        by_speaker: plan.by_speaker,
        within_fold: plan.within_fold,
        trials,
    })
}

pub(super) fn pct(m: &MeanStd) -> String {
    format!("{:.2} ± {:.2}", 100.0 * m.mean, 100.0 * m.std)
}

/// Writes the report files for `report` into `out` and prints its summary.
pub fn write_report(out: &Path, report: &Report) -> Result<()> {
    match report.kind {
        PlanKind::Cv => write_cv_report(out, report),
        PlanKind::Sweep | PlanKind::Table3 => write_sweep_report(out, report),
    }
}

pub(super) fn split_name(r: &Report) -> String {
    let kind = if r.by_speaker {
        "speaker-independent"
    } else {
        "stratified"
    };
    match &r.within_fold {
        Some(w) => format!("{}-fold {kind} inside outer fold {w}", r.folds),
        None => format!("{}-fold {kind}", r.folds),
    }
}

/// cv.json: the one trial's folds and summary, in the layout cv.json always had (plus UA and
/// the fold plan's details).
#[derive(Serialize)]
pub(super) struct CvJson<'a> {
    data: &'a str,
    labels: &'a [String],
    folds: &'a [UnitResult],
    by_speaker: bool,
    within_fold: &'a Option<String>,
    ua_mean: f64,
    ua_std: f64,
    accuracy_mean: f64,
    accuracy_std: f64,
    micro_f1_mean: f64,
    micro_f1_std: f64,
    macro_f1_mean: f64,
    macro_f1_std: f64,
    parameters: usize,
    train_seconds: f64,
    confusion: &'a Confusion,
}

pub(super) fn write_cv_report(out: &Path, report: &Report) -> Result<()> {
    let t = &report.trials[0];
    println!(
        "{}: UA {}%  WA {}%  micro-F1 {}%  macro-F1 {}%",
        split_name(report),
        pct(&t.ua),
        pct(&t.wa),
        pct(&t.micro_f1),
        pct(&t.macro_f1)
    );
    println!("{}", t.confusion.to_table(&report.labels));
    confusion_png(
        &out.join("confusion.png"),
        &t.confusion.counts,
        &report.labels,
        "cross-validation: summed confusion",
    )?;
    chart::save_png(&out.join("learning_curve.png"), &folds_svg(&t.folds))?;
    let json = CvJson {
        data: &report.data,
        labels: &report.labels,
        folds: &t.folds,
        by_speaker: report.by_speaker,
        within_fold: &report.within_fold,
        ua_mean: t.ua.mean,
        ua_std: t.ua.std,
        accuracy_mean: t.wa.mean,
        accuracy_std: t.wa.std,
        micro_f1_mean: t.micro_f1.mean,
        micro_f1_std: t.micro_f1.std,
        macro_f1_mean: t.macro_f1.mean,
        macro_f1_std: t.macro_f1.std,
        parameters: t.parameters,
        train_seconds: t.train_seconds,
        confusion: &t.confusion,
    };
    atomic_write(
        &out.join("cv.json"),
        serde_json::to_string_pretty(&json)?.as_bytes(),
    )?;
    println!(
        "wrote {}/cv.json, confusion.png, learning_curve.png",
        out.display()
    );
    Ok(())
}

/// A cv's folds overlaid (cv's learning_curve.png; `serve` shows the same SVG).
pub fn folds_svg(folds: &[UnitResult]) -> String {
    let runs: Vec<(String, &[crate::train::fit::EpochRecord])> = folds
        .iter()
        .map(|r| (format!("fold {}", r.fold), r.history.as_slice()))
        .collect();
    compare_svg(&runs)
}

/// A sweep's scores, mean ± std over folds, per trial (results.png; `serve` shows the same
/// SVG): for Table 3 against the kernel size, with the kernel sizes as ticks.
pub fn results_svg(report: &Report) -> String {
    let table3 = report.kind == PlanKind::Table3;
    let x = |i: usize, t: &TrialSummary| {
        if table3 {
            t.kernel_size as f64
        } else {
            (i + 1) as f64
        }
    };
    let series = |name: &str, k: usize, f: fn(&TrialSummary) -> MeanStd| {
        let mut s = Series::new(
            name,
            k,
            report
                .trials
                .iter()
                .enumerate()
                .map(|(i, t)| (x(i, t), 100.0 * f(t).mean))
                .collect(),
        );
        s.err = Some(report.trials.iter().map(|t| 100.0 * f(t).std).collect());
        s
    };
    let mut xs: Vec<f64> = report
        .trials
        .iter()
        .enumerate()
        .map(|(i, t)| x(i, t))
        .collect();
    xs.sort_by(f64::total_cmp);
    xs.dedup();
    let panel = Panel {
        id: "sweep-chart".into(),
        title: if table3 {
            format!(
                "Table 3: mean ± std over {} folds by kernel size",
                report.folds
            )
        } else {
            format!("mean ± std over {} folds by trial", report.folds)
        },
        x_label: if table3 { "kernel size" } else { "trial" }.into(),
        y_label: "%".into(),
        series: vec![
            series("UA", 0, |t| t.ua),
            series("WA", 1, |t| t.wa),
            series("macro-F1", 2, |t| t.macro_f1),
        ],
        x_ticks: (xs.len() <= 12).then_some(xs),
        x_whole: true,
        ..Default::default()
    };
    chart::figure(&[panel], 640.0, 380.0)
}

/// results.md: one row per trial.
pub fn results_markdown(report: &Report) -> String {
    let mut s = format!(
        "# {} on {} ({})\n\n| trial | settings | parameters | UA % | WA % | macro-F1 % | train time s |\n|---|---|---|---|---|---|---|\n",
        match report.kind {
            PlanKind::Table3 => "Table 3 (kernel size)",
            _ => "Sweep",
        },
        report.data,
        split_name(report)
    );
    for t in &report.trials {
        s += &format!(
            "| {} | {} | {} | {} | {} | {} | {:.0} |\n",
            t.dir,
            t.name,
            t.parameters,
            pct(&t.ua),
            pct(&t.wa),
            pct(&t.macro_f1),
            t.train_seconds
        );
    }
    s
}

/// results.csv: one row per trial, numbers in full precision.
pub fn results_csv(report: &Report) -> String {
    let mut s = String::from(
        "trial,settings,seed,parameters,ua_mean,ua_std,wa_mean,wa_std,micro_f1_mean,micro_f1_std,macro_f1_mean,macro_f1_std,train_seconds\n",
    );
    for t in &report.trials {
        s += &format!(
            "{},\"{}\",{},{},{},{},{},{},{},{},{},{},{:.3}\n",
            t.dir,
            t.name,
            t.seed,
            t.parameters,
            t.ua.mean,
            t.ua.std,
            t.wa.mean,
            t.wa.std,
            t.micro_f1.mean,
            t.micro_f1.std,
            t.macro_f1.mean,
            t.macro_f1.std,
            t.train_seconds
        );
    }
    s
}

/// table3.md: the paper's Table 3 layout (kernel size, padding, accuracy, F1, parameters),
/// largest kernel first as in the paper.
pub fn table3_markdown(report: &Report) -> String {
    let mut s = format!(
        "| Kernel Size | Padding | Accuracy (%) | Macro F1 (%) | UA (%) | Params (M) |\n|---|---|---|---|---|---|\n<!-- {} on {} -->\n",
        split_name(report),
        report.data
    );
    let mut rows: Vec<&TrialSummary> = report.trials.iter().collect();
    rows.sort_by_key(|t| std::cmp::Reverse(t.kernel_size));
    for t in rows {
        s += &format!(
            "| {} | {} | {} | {} | {} | {:.2} |\n",
            t.kernel_size,
            t.kernel_size / 2,
            pct(&t.wa),
            pct(&t.macro_f1),
            pct(&t.ua),
            t.parameters as f64 / 1e6
        );
    }
    s
}

pub(super) fn write_sweep_report(out: &Path, report: &Report) -> Result<()> {
    let md = results_markdown(report);
    print!("{md}");
    atomic_write(&out.join("results.md"), md.as_bytes())?;
    atomic_write(&out.join("results.csv"), results_csv(report).as_bytes())?;
    atomic_write(
        &out.join("results.json"),
        serde_json::to_string_pretty(report)?.as_bytes(),
    )?;
    chart::save_png(&out.join("results.png"), &results_svg(report))?;
    let mut wrote = "results.md, results.csv, results.json, results.png".to_string();
    if report.kind == PlanKind::Table3 {
        let t3 = table3_markdown(report);
        print!("{t3}");
        atomic_write(&out.join("table3.md"), t3.as_bytes())?;
        wrote += ", table3.md";
    }
    println!("wrote {}: {wrote}", out.display());
    Ok(())
}
