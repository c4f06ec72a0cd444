//! Which share of a cv or sweep this process runs: `--shard I/N`, or the scheduler's
//! environment (a Slurm job array, a Kubernetes Indexed Job). Work units are dealt
//! round-robin (unit u belongs to shard u mod N), so every shard gets a mix of trials rather
//! than all the slow ones.
//!
//! Layer: train (beside engine, below cli). May use `cpu`, `features`, `model`, `audio`,
//! `device` and the shared modules (`rng`, `isa`, `cache`, `atomic_file`); never `cli`, and not
//! `engine` (the device backend is chosen above it).

use anyhow::{bail, Context, Result};
use serde::Serialize;

/// Most shards a job may be split into (`--shard I/N`, `--shard-count`, a scheduler's array).
pub const MAX_SHARDS: usize = 100_000;

/// Shard `index` (0-based) of `count`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct Shard {
    pub index: usize,
    pub count: usize,
}

impl Shard {
    /// The whole job.
    pub const ALL: Shard = Shard { index: 0, count: 1 };

    /// Parses `I/N` with I from 1 to N (as people count shards on a command line).
    pub fn parse(s: &str) -> Result<Shard> {
        let (i, n) = s
            .split_once('/')
            .with_context(|| format!("--shard {s}: expected I/N, e.g. 2/4"))?;
        let i: usize = i
            .trim()
            .parse()
            .with_context(|| format!("--shard {s}: '{i}' is not a whole number"))?;
        let n: usize = n
            .trim()
            .parse()
            .with_context(|| format!("--shard {s}: '{n}' is not a whole number"))?;
        if n == 0 || i == 0 || i > n || n > MAX_SHARDS {
            bail!("--shard {s}: I must be between 1 and N, N between 1 and {MAX_SHARDS}");
        }
        Ok(Shard {
            index: i - 1,
            count: n,
        })
    }

    /// Whether work unit `unit` (0-based, in plan order) is this shard's.
    pub fn owns(&self, unit: usize) -> bool {
        unit % self.count == self.index
    }

    /// `I/N` as `--shard` takes it.
    pub fn label(&self) -> String {
        format!("{}/{}", self.index + 1, self.count)
    }
}

/// Where the shard comes from, first match wins: the `--shard I/N` flag; a Slurm array task
/// (`SLURM_ARRAY_TASK_ID` within `SLURM_ARRAY_TASK_MIN..=SLURM_ARRAY_TASK_MAX`, any start,
/// `SLURM_ARRAY_TASK_STEP` honoured); a Kubernetes Indexed Job (`JOB_COMPLETION_INDEX`, 0-based,
/// with the count from `--shard-count` or `SER_SHARD_COUNT`, since Kubernetes does not export
/// `completions`). Nothing set: the whole job. `env` reads a variable (`std::env::var` in the
/// binary, a map in tests).
pub fn shard_from(
    flag: Option<&str>,
    count_flag: Option<usize>,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<Shard> {
    if let Some(s) = flag {
        return Shard::parse(s);
    }
    let num =
        |name: &str| -> Result<Option<i64>> {
            match env(name) {
                None => Ok(None),
                Some(v) => v.trim().parse::<i64>().map(Some).with_context(|| {
                    format!("environment variable {name}={v}: not a whole number")
                }),
            }
        };
    if let Some(id) = num("SLURM_ARRAY_TASK_ID")? {
        let (Some(min), Some(max)) = (num("SLURM_ARRAY_TASK_MIN")?, num("SLURM_ARRAY_TASK_MAX")?)
        else {
            bail!(
                "SLURM_ARRAY_TASK_ID is set but SLURM_ARRAY_TASK_MIN/MAX are not: cannot tell \
                 this task's share (give --shard I/N)"
            );
        };
        let step = num("SLURM_ARRAY_TASK_STEP")?.unwrap_or(1);
        if step < 1 || max < min || id < min || id > max || (id - min) % step != 0 {
            bail!(
                "Slurm array task {id} does not fit SLURM_ARRAY_TASK_MIN={min}, \
                 SLURM_ARRAY_TASK_MAX={max}, step {step} (give --shard I/N)"
            );
        }
        // `--array=0-9%2` and `--array=1-10` both give 10 shards. A list like `--array=1,5,9`
        // sets MIN/MAX like the range 1-9 and would leave shards unrun; Slurm's task count
        // (3 there) tells the two apart.
        let count = (max - min) / step + 1;
        if let Some(tasks) = num("SLURM_ARRAY_TASK_COUNT")? {
            if tasks != count {
                bail!(
                    "the Slurm array has {tasks} tasks (SLURM_ARRAY_TASK_COUNT) but the range \
                     {min}-{max}:{step} has {count}: an index list such as --array=1,5,9 cannot \
                     be split into shards; submit a range (--array=0-{last}) or give --shard I/N",
                    last = tasks - 1
                );
            }
        }
        if count > MAX_SHARDS as i64 {
            bail!("Slurm array of {count} tasks: at most {MAX_SHARDS} shards");
        }
        return Ok(Shard {
            index: ((id - min) / step) as usize,
            count: count as usize,
        });
    }
    if let Some(idx) = num("JOB_COMPLETION_INDEX")? {
        let count = match count_flag {
            Some(c) => c as i64,
            None => num("SER_SHARD_COUNT")?.with_context(|| {
                "JOB_COMPLETION_INDEX is set (a Kubernetes Indexed Job) but the number of shards \
                 is not: give --shard-count N or set SER_SHARD_COUNT to the Job's completions"
            })?,
        };
        if !(1..=MAX_SHARDS as i64).contains(&count) || idx < 0 || idx >= count {
            bail!("JOB_COMPLETION_INDEX={idx} is outside 0..{count} (the shard count)");
        }
        return Ok(Shard {
            index: idx as usize,
            count: count as usize,
        });
    }
    if count_flag.is_some() {
        bail!("--shard-count is for Kubernetes Indexed Jobs and needs JOB_COMPLETION_INDEX set");
    }
    Ok(Shard::ALL)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn env(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let m: HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        move |k| m.get(k).cloned()
    }

    #[test]
    fn flag_parses_one_based() {
        assert_eq!(Shard::parse("2/4").unwrap(), Shard { index: 1, count: 4 });
        for bad in ["0/4", "5/4", "1/0", "x/2", "3", ""] {
            assert!(Shard::parse(bad).is_err(), "{bad}");
        }
        let s = Shard { index: 1, count: 3 };
        let owned: Vec<usize> = (0..8).filter(|&u| s.owns(u)).collect();
        assert_eq!(owned, vec![1, 4, 7]);
    }

    #[test]
    fn slurm_arrays_start_anywhere() {
        let none = env(&[]);
        assert_eq!(shard_from(None, None, &none).unwrap(), Shard::ALL);
        // --array=0-3
        let e = env(&[
            ("SLURM_ARRAY_TASK_ID", "0"),
            ("SLURM_ARRAY_TASK_MIN", "0"),
            ("SLURM_ARRAY_TASK_MAX", "3"),
        ]);
        assert_eq!(
            shard_from(None, None, &e).unwrap(),
            Shard { index: 0, count: 4 }
        );
        // --array=7-9: task 9 is the last of 3
        let e = env(&[
            ("SLURM_ARRAY_TASK_ID", "9"),
            ("SLURM_ARRAY_TASK_MIN", "7"),
            ("SLURM_ARRAY_TASK_MAX", "9"),
        ]);
        assert_eq!(
            shard_from(None, None, &e).unwrap(),
            Shard { index: 2, count: 3 }
        );
        // --array=10-20:5 → tasks 10, 15, 20
        let stepped = [
            ("SLURM_ARRAY_TASK_ID", "15"),
            ("SLURM_ARRAY_TASK_MIN", "10"),
            ("SLURM_ARRAY_TASK_MAX", "20"),
            ("SLURM_ARRAY_TASK_STEP", "5"),
        ];
        let e = env(&stepped);
        assert_eq!(
            shard_from(None, None, &e).unwrap(),
            Shard { index: 1, count: 3 }
        );
        // the flag wins over the environment
        assert_eq!(
            shard_from(Some("1/2"), None, &e).unwrap(),
            Shard { index: 0, count: 2 }
        );
        let bad = env(&[
            ("SLURM_ARRAY_TASK_ID", "4"),
            ("SLURM_ARRAY_TASK_MIN", "0"),
            ("SLURM_ARRAY_TASK_MAX", "3"),
        ]);
        assert!(shard_from(None, None, &bad).is_err());
        // Slurm sets the task count too; it agrees with a range, and exposes a list.
        let mut range = stepped.to_vec();
        range.push(("SLURM_ARRAY_TASK_COUNT", "3"));
        assert_eq!(
            shard_from(None, None, &env(&range)).unwrap(),
            Shard { index: 1, count: 3 }
        );
        // --array=1,5,9: MIN 1 and MAX 9 as for the range 1-9, but 3 tasks
        let list = env(&[
            ("SLURM_ARRAY_TASK_ID", "5"),
            ("SLURM_ARRAY_TASK_MIN", "1"),
            ("SLURM_ARRAY_TASK_MAX", "9"),
            ("SLURM_ARRAY_TASK_COUNT", "3"),
        ]);
        let msg = format!("{:#}", shard_from(None, None, &list).unwrap_err());
        assert!(
            msg.contains("3 tasks") && msg.contains("--array=0-2"),
            "{msg}"
        );
        range[4].1 = "x";
        assert!(shard_from(None, None, &env(&range)).is_err());
        let partial = env(&[("SLURM_ARRAY_TASK_ID", "1")]);
        let msg = format!("{:#}", shard_from(None, None, &partial).unwrap_err());
        assert!(msg.contains("SLURM_ARRAY_TASK_MIN"), "{msg}");
    }

    #[test]
    fn kubernetes_index_needs_a_count() {
        let e = env(&[("JOB_COMPLETION_INDEX", "2")]);
        let msg = format!("{:#}", shard_from(None, None, &e).unwrap_err());
        assert!(msg.contains("--shard-count"), "{msg}");
        assert_eq!(
            shard_from(None, Some(5), &e).unwrap(),
            Shard { index: 2, count: 5 }
        );
        let e = env(&[("JOB_COMPLETION_INDEX", "2"), ("SER_SHARD_COUNT", "3")]);
        assert_eq!(
            shard_from(None, None, &e).unwrap(),
            Shard { index: 2, count: 3 }
        );
        let e = env(&[("JOB_COMPLETION_INDEX", "3"), ("SER_SHARD_COUNT", "3")]);
        assert!(shard_from(None, None, &e).is_err());
        let e = env(&[("JOB_COMPLETION_INDEX", "x")]);
        assert!(shard_from(None, Some(2), &e).is_err());
        assert!(shard_from(None, Some(2), &env(&[])).is_err());
    }
}
