//! `ser-engine info`: the build (version, CPU threads, devices and why one is missing), with
//! `--data` a corpus summary (layout, clips, durations, sample rates, classes, speakers,
//! unreadable files), with `--model-summary` the parameter table of the model.
//!
//! Layer: cli, the top. May use every other module.

use crate::audio::corpus::{load_corpus, Corpus, CorpusOptions};
use clap::Args;
use std::collections::BTreeMap;
use std::path::PathBuf;

#[derive(Debug, Args)]
pub struct InfoArgs {
    /// Corpus folder (or CSV manifest) to summarise; repeat it for several corpora, shown as
    /// the one corpus `train --data a --data b` trains on.
    #[arg(long)]
    pub data: Vec<PathBuf>,
    /// Label map of several corpora (as `train --label-map`).
    #[arg(long, value_name = "FILE")]
    pub label_map: Option<PathBuf>,
    #[command(flatten)]
    pub corpus: CorpusOptions,
    /// Print the model's parameters layer by layer (PyTorch state_dict names) and the total.
    #[arg(long)]
    pub model_summary: bool,
    /// Convolution kernel size for --model-summary.
    #[arg(long, default_value_t = 7, allow_negative_numbers = true, value_parser = crate::train::options::Whole::<usize>::new())]
    pub kernel_size: usize,
    /// Number of classes for --model-summary.
    #[arg(long, default_value_t = 5, allow_negative_numbers = true, value_parser = crate::train::options::Whole::<usize>::new())]
    pub classes: usize,
    /// Leave BatchNorm out of --model-summary.
    #[arg(long)]
    pub no_batchnorm: bool,
}

pub fn run(args: &InfoArgs, _global: &super::Global) -> anyhow::Result<()> {
    if args.model_summary {
        let cfg = crate::model::ModelConfig {
            kernel: args.kernel_size,
            classes: args.classes,
            batchnorm: !args.no_batchnorm,
            ..Default::default()
        };
        cfg.validate()?;
        println!(
            "ArabEmoNet, kernel {k}x{k}, {} classes, BatchNorm {}",
            cfg.classes,
            if cfg.batchnorm { "on" } else { "off" },
            k = cfg.kernel
        );
        print!("{}", crate::model::summary(&cfg));
        return Ok(());
    }
    match args.data.as_slice() {
        [] => {
            if args.label_map.is_some() {
                anyhow::bail!("--label-map needs --data");
            }
            println!("{}", build_summary());
            println!("{}", crate::isa::report());
            for line in crate::device::device_report() {
                println!("{line}");
            }
            Ok(())
        }
        [data] if args.label_map.is_none() => {
            let corpus = load_corpus(data, &args.corpus)?;
            print!("{}", corpus_summary(&corpus));
            Ok(())
        }
        several => {
            let map = args
                .label_map
                .as_deref()
                .map(crate::audio::merge::LabelMap::load)
                .transpose()?;
            let corpora = several
                .iter()
                .map(|d| load_corpus(d, &args.corpus))
                .collect::<anyhow::Result<Vec<_>>>()?;
            let (corpus, warnings) = crate::audio::merge::merge_corpora(corpora, map.as_ref())?;
            for w in warnings {
                eprintln!("{w}");
            }
            print!("{}", corpus_summary(&corpus));
            Ok(())
        }
    }
}

/// Crate version and the CPU threads rayon uses.
pub fn build_summary() -> String {
    format!(
        "ser-engine {} ({} build)\ncpu threads: {}",
        env!("CARGO_PKG_VERSION"),
        if cfg!(debug_assertions) {
            "debug"
        } else {
            "release"
        },
        rayon::current_num_threads()
    )
}

/// Seconds as h:mm:ss (rounded to the nearest second).
pub fn hms(seconds: f64) -> String {
    let s = seconds.max(0.0).round() as u64;
    format!("{}:{:02}:{:02}", s / 3600, (s / 60) % 60, s % 60)
}

/// The multi-line corpus summary `info --data` prints.
pub fn corpus_summary(c: &Corpus) -> String {
    let mut out = String::new();
    let mut line = |s: String| {
        out.push_str(&s);
        out.push('\n');
    };
    line(format!("corpus: {}", c.root.display()));
    line(format!(
        "format: {}",
        format!("{:?}", c.format).to_lowercase()
    ));
    line(format!("clips: {}", c.clips.len()));
    line(format!("duration: {}", hms(c.total_duration_s())));
    let mut rates: BTreeMap<u32, usize> = BTreeMap::new();
    for clip in &c.clips {
        *rates.entry(clip.sample_rate).or_default() += 1;
    }
    line(format!(
        "sample rates: {}",
        rates
            .iter()
            .map(|(r, n)| format!("{r} Hz ({n})"))
            .collect::<Vec<_>>()
            .join(", ")
    ));
    line(format!("classes: {}", c.labels.len()));
    let mut seconds = vec![0.0f64; c.labels.len()];
    for clip in &c.clips {
        if let Some(i) = c.label_index(&clip.label) {
            seconds[i] += clip.duration_s;
        }
    }
    for ((label, n), s) in c.labels.iter().zip(c.class_counts()).zip(seconds) {
        line(format!("  {label}: {n} clips, {}", hms(s)));
    }
    let speakers = c.speakers();
    if speakers.is_empty() {
        line("speakers: unknown (the layout does not name them)".to_string());
    } else {
        line(format!(
            "speakers: {} ({})",
            speakers.len(),
            speakers.join(", ")
        ));
    }
    line(format!("unreadable: {}", c.unreadable.len()));
    for (p, why) in &c.unreadable {
        line(format!("  {}: {why}", p.display()));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hms_formats() {
        assert_eq!(hms(0.0), "0:00:00");
        assert_eq!(hms(59.6), "0:01:00");
        assert_eq!(hms(3600.0 + 62.0), "1:01:02");
        assert_eq!(hms(1350.4), "0:22:30");
    }
}
