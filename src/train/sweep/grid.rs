//! A sweep's grid: the flags it may vary ([`GRID_FLAGS`]), its axes (`--grid FLAG=V1,V2`),
//! and the trials, one per grid point, each with its resolved training options. Uses
//! `train::options` and `train::recipe`.

use crate::model::{ModelConfig, ParamLayout};
use crate::train::fit::FitConfig;
use crate::train::options::TrainOpts;
use crate::train::recipe::Recipe;
use crate::train::schedule::Schedule;
use anyhow::{bail, Context, Result};
use clap::ValueEnum;
use serde::{Deserialize, Serialize};

/// The training flags a sweep can vary (`--grid FLAG=V1,V2,...`). Flags that change the
/// features (n-mels, sample rate) are not among them: every trial shares one decoded corpus.
pub const GRID_FLAGS: &[&str] = &[
    "kernel-size",
    "lr",
    "seed",
    "dropout",
    "epochs",
    "batch-size",
    "weight-decay",
    "label-smoothing",
    "augment",
    "recipe",
    "schedule",
    "clip-grad",
    "noise-prob",
    "time-mask-frac",
];

/// One axis of the grid: a flag and its values as written.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Axis {
    pub flag: String,
    pub values: Vec<String>,
}

/// Parses `FLAG=V1,V2,...`.
pub fn parse_axis(s: &str) -> Result<Axis> {
    let (flag, values) = s
        .split_once('=')
        .with_context(|| format!("--grid {s}: expected FLAG=V1,V2,..., e.g. lr=1e-3,3e-3"))?;
    let flag = flag.trim().trim_start_matches("--").to_string();
    if !GRID_FLAGS.contains(&flag.as_str()) {
        bail!(
            "--grid {s}: '{flag}' cannot be swept; one of: {}",
            GRID_FLAGS.join(", ")
        );
    }
    let values: Vec<String> = values
        .split(',')
        .map(|v| v.trim().to_string())
        .filter(|v| !v.is_empty())
        .collect();
    if values.is_empty() {
        bail!("--grid {s}: no values");
    }
    // A repeated value would train the same trial twice (1e-3 and 0.001 are one value).
    let same = |a: &str, b: &str| {
        a.eq_ignore_ascii_case(b)
            || matches!((a.parse::<f64>(), b.parse::<f64>()), (Ok(x), Ok(y)) if x == y)
    };
    for (i, v) in values.iter().enumerate() {
        if let Some(w) = values[..i].iter().find(|w| same(w, v)) {
            bail!("--grid {s}: '{v}' repeats '{w}'; each value gives one trial");
        }
    }
    Ok(Axis { flag, values })
}

/// Sets `flag` to `value` on `opts` (and the trial's seed for `seed`).
pub(super) fn apply(opts: &mut TrainOpts, seed: &mut u64, flag: &str, value: &str) -> Result<()> {
    fn num<T: std::str::FromStr>(flag: &str, v: &str) -> Result<T> {
        v.parse()
            .map_err(|_| anyhow::anyhow!("--grid {flag}={v}: '{v}' is not a valid number"))
    }
    match flag {
        "kernel-size" => opts.kernel_size = num(flag, value)?,
        "lr" => opts.lr = Some(num(flag, value)?),
        "seed" => *seed = num(flag, value)?,
        "dropout" => opts.dropout = num(flag, value)?,
        "epochs" => opts.epochs = Some(num(flag, value)?),
        "batch-size" => opts.batch_size = Some(num(flag, value)?),
        "weight-decay" => opts.weight_decay = num(flag, value)?,
        "label-smoothing" => opts.label_smoothing = num(flag, value)?,
        "clip-grad" => opts.clip_grad = num(flag, value)?,
        "noise-prob" => opts.noise_prob = num(flag, value)?,
        "time-mask-frac" => opts.time_mask_frac = num(flag, value)?,
        "augment" => match value {
            "on" | "true" | "yes" => (opts.augment, opts.no_augment) = (true, false),
            "off" | "false" | "no" => (opts.augment, opts.no_augment) = (false, true),
            _ => bail!("--grid augment={value}: use on or off"),
        },
        "recipe" => {
            opts.recipe = Recipe::from_str(value, true)
                .map_err(|_| anyhow::anyhow!("--grid recipe={value}: use paper or strong"))?
        }
        "schedule" => {
            opts.schedule =
                Some(Schedule::from_str(value, true).map_err(|_| {
                    anyhow::anyhow!("--grid schedule={value}: use plateau or cosine")
                })?)
        }
        _ => bail!("--grid: '{flag}' cannot be swept"),
    }
    Ok(())
}

/// One trial: a point of the grid, fully resolved.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Trial {
    /// e.g. `kernel-size=5 lr=1e-3`; `base` without a grid.
    pub name: String,
    /// Folder under OUT holding its folds (empty for cv: the folds sit in OUT).
    pub dir: String,
    pub settings: Vec<(String, String)>,
    /// Seed of initialisation, shuffling, dropout and augmentation (folds and validation
    /// splits use the global seed, so every trial sees the same data).
    pub seed: u64,
    pub parameters: usize,
    pub model: ModelConfig,
    pub fit: FitConfig,
}

/// Most trials a grid may have (the product of its axes' lengths).
pub const MAX_TRIALS: usize = 10_000;

/// The points of a grid, first axis slowest; at most [`MAX_TRIALS`].
pub(super) fn grid_points(grid: &[Axis]) -> Result<Vec<Vec<(String, String)>>> {
    let count = grid
        .iter()
        .try_fold(1usize, |n, a| n.checked_mul(a.values.len()));
    if count.is_none_or(|n| n > MAX_TRIALS) {
        bail!(
            "--grid: {} trials (the product of the axes' lengths): at most {MAX_TRIALS}",
            count.map_or("too many".to_string(), |n| n.to_string())
        );
    }
    let mut points: Vec<Vec<(String, String)>> = vec![vec![]];
    for axis in grid {
        points = points
            .into_iter()
            .flat_map(|p| {
                axis.values.iter().map(move |v| {
                    let mut q = p.clone();
                    q.push((axis.flag.clone(), v.clone()));
                    q
                })
            })
            .collect();
    }
    Ok(points)
}

/// The options and seed of one grid point. A grid value is an option value: it is checked
/// against the same ranges as on the command line.
pub(super) fn resolve(
    base: &TrainOpts,
    seed: u64,
    settings: &[(String, String)],
) -> Result<(TrainOpts, u64)> {
    let mut opts = base.clone();
    let mut s = seed;
    for (f, v) in settings {
        apply(&mut opts, &mut s, f, v)?;
    }
    if !settings.is_empty() {
        opts.validate()
            .with_context(|| format!("--grid: trial {}", settings_name(settings)))?;
    }
    Ok((opts, s))
}

/// Checks every trial's values (`resolve`) before any work starts.
pub fn check_grid(base: &TrainOpts, grid: &[Axis], seed: u64) -> Result<()> {
    for settings in grid_points(grid)? {
        resolve(base, seed, &settings)?;
    }
    Ok(())
}

/// The trials of a grid (first axis slowest), from the base options.
pub fn make_trials(
    base: &TrainOpts,
    grid: &[Axis],
    seed: u64,
    classes: usize,
    folds_in_out: bool,
) -> Result<Vec<(Trial, TrainOpts)>> {
    let points = grid_points(grid)?;
    let width = points.len().saturating_sub(1).to_string().len().max(2);
    points
        .into_iter()
        .enumerate()
        .map(|(i, settings)| {
            let (opts, s) = resolve(base, seed, &settings)?;
            let model = opts
                .model(classes)
                .with_context(|| format!("trial {}", settings_name(&settings)))?;
            let trial = Trial {
                name: settings_name(&settings),
                dir: if folds_in_out {
                    String::new()
                } else {
                    format!("trial-{i:0width$}")
                },
                parameters: ParamLayout::new(&model).total(),
                fit: opts.fit(s),
                model,
                seed: s,
                settings,
            };
            Ok((trial, opts))
        })
        .collect()
}

pub(super) fn settings_name(settings: &[(String, String)]) -> String {
    if settings.is_empty() {
        return "base".into();
    }
    settings
        .iter()
        .map(|(f, v)| format!("{f}={v}"))
        .collect::<Vec<_>>()
        .join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::train::options::parse_opts;

    #[test]
    fn grid_is_a_product_first_axis_slowest() {
        let base = parse_opts(&["--data", "x"]);
        let grid = vec![
            parse_axis("kernel-size=3,5").unwrap(),
            parse_axis("--lr=1e-3,3e-3,1e-2").unwrap(),
        ];
        let trials = make_trials(&base, &grid, 42, 4, false).unwrap();
        assert_eq!(trials.len(), 6);
        let names: Vec<&str> = trials.iter().map(|(t, _)| t.name.as_str()).collect();
        assert_eq!(names[0], "kernel-size=3 lr=1e-3");
        assert_eq!(names[5], "kernel-size=5 lr=1e-2");
        assert_eq!(trials[4].0.model.kernel, 5);
        assert_eq!(trials[4].0.fit.lr, 3e-3);
        assert_eq!(trials[4].0.dir, "trial-04");
        // a bigger kernel has more parameters (paper Table 3: 0.55 M at 3, 0.71 M at 5)
        assert!(trials[3].0.parameters > trials[0].0.parameters);
        let seeds = make_trials(&base, &[parse_axis("seed=1,2").unwrap()], 42, 4, false).unwrap();
        assert_eq!((seeds[0].0.seed, seeds[1].0.fit.seed), (1, 2));
        assert!(parse_axis("n-mels=64,128").is_err());
        assert!(parse_axis("lr").is_err());
        for dup in [
            "lr=1e-3,3e-3,0.001",
            "recipe=paper,Paper",
            "kernel-size=3,3",
        ] {
            let e = parse_axis(dup).unwrap_err();
            assert!(format!("{e:#}").contains("repeats"), "{dup}: {e:#}");
        }
        assert!(make_trials(&base, &[parse_axis("lr=fast").unwrap()], 42, 4, false).is_err());
        let recipes = make_trials(
            &base,
            &[parse_axis("recipe=paper,strong").unwrap()],
            1,
            4,
            true,
        )
        .unwrap();
        assert_eq!(recipes[1].0.fit.schedule, Schedule::Cosine);
        assert_eq!(recipes[0].0.fit.schedule, Schedule::Plateau);
        assert_eq!(recipes[0].0.dir, "");
    }

    #[test]
    fn grid_values_are_checked_and_the_grid_is_bounded() {
        let base = parse_opts(&["--data", "x"]);
        let axis = |f: &str, n: usize| Axis {
            flag: f.into(),
            values: (1..=n).map(|v| v.to_string()).collect(),
        };
        assert!(check_grid(&base, &[axis("seed", 100), axis("epochs", 100)], 1).is_ok());
        let e = check_grid(&base, &[axis("seed", 101), axis("epochs", 100)], 1).unwrap_err();
        assert!(format!("{e:#}").contains("10100 trials"), "{e:#}");
        let huge = vec![axis("seed", 1000); 8];
        assert!(format!("{:#}", check_grid(&base, &huge, 1).unwrap_err()).contains("too many"));
        let e = check_grid(&base, &[parse_axis("batch-size=8,0").unwrap()], 1).unwrap_err();
        assert!(
            format!("{e:#}").contains("trial batch-size=0: --batch-size 0: must be ≥ 1"),
            "{e:#}"
        );
    }

    #[test]
    fn paper_table3_parameter_counts() {
        // Only the conv weights depend on the kernel size: k²·(1·32 + 32·64 + 64·128) of them.
        let base = parse_opts(&["--data", "x"]);
        let ks = [3usize, 5, 7, 9, 11];
        let trials = make_trials(
            &base,
            &[parse_axis("kernel-size=3,5,7,9,11").unwrap()],
            42,
            6,
            false,
        )
        .unwrap();
        let p: Vec<usize> = trials.iter().map(|(t, _)| t.parameters).collect();
        for i in 1..5 {
            assert_eq!(
                p[i] - p[i - 1],
                (ks[i] * ks[i] - ks[i - 1] * ks[i - 1]) * 10_272
            );
        }
        // The paper's Table 3 (KSUEmotion, 6 classes): 0.55, 0.71, 0.97, 1.29, 1.71 M; ours
        // agree to 0.01 M (0.719 M at k = 5, which the paper prints as 0.71).
        for (n, paper) in p.iter().zip([0.55, 0.71, 0.97, 1.29, 1.71]) {
            assert!((*n as f64 / 1e6 - paper).abs() < 0.01, "{n} vs {paper} M");
        }
    }
}
