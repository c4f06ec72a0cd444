//! The synthetic demo corpus of emotional prosody: speech-like clips for five emotions, so that
//! `ser-engine train` with no `--data` has something to learn out of the box and tests can train
//! end to end without real speech.
//!
//! Each clip is a source-filter "voice": a Rosenberg glottal-flow-derivative pulse train (with
//! per-period jitter and shimmer and pulse-synchronous aspiration noise) through a cascade of
//! four formant resonators (Klatt-style two-pole sections), shaped into syllables (a vowel nucleus
//! preceded by a closure, a fricative or a plosive burst). Six speakers differ in base F0 and
//! vocal-tract length (formant scale). The emotions differ the way acted speech does:
//!
//! | class     | F0 level | contour                         | rate  | level | voice quality       |
//! |-----------|----------|---------------------------------|-------|-------|---------------------|
//! | neutral   | mid      | flat, mild declination          | mid   | mid   | modal               |
//! | sadness   | low      | falling, little movement        | slow  | low   | breathy, dark, soft onsets, fading |
//! | happiness | high     | wide rise-fall hump per syllable | fast  | mid+  | modal               |
//! | anger     | high     | sharp fall from each accented onset | fast | high | tense, bright, abrupt onsets, percussive |
//! | surprise  | mid      | sharp F0 jump upward late in the utterance | mid | mid | modal      |
//!
//! Every clip also draws its own speaker-relative F0 offset, syllable rate, loudness (±6 dB),
//! length (1–3 s, independent of the class), vowels, consonants and noise floor, so no single
//! global statistic (RMS, mean F0, duration, spectral centroid) separates the classes; the
//! spectro-temporal pattern does (`tests/synth.rs` measures both).
//!
//! Randomness comes only from [`crate::rng`]: a clip is a pure function of (seed, class, index,
//! sample rate), so the corpus is reproducible bit for bit.
//!
//! Layer: audio (below train, engine and cli). May use the shared modules (`rng`, `isa`,
//! `cache`, `atomic_file`); nothing else of the crate.

use crate::rng::{box_muller, philox_words, Purpose, Stream};
use anyhow::{bail, Context, Result};
use rayon::prelude::*;
use std::f32::consts::PI;
use std::fs;
use std::path::{Path, PathBuf};

/// Class names, in label order; also the folder names of the corpus.
pub const CLASSES: [&str; 5] = ["neutral", "sadness", "happiness", "anger", "surprise"];

/// Speaker ids as they appear in file names; clip `index` is spoken by `SPEAKERS[index % 6]`, so
/// every class has every speaker equally often.
pub const SPEAKERS: [&str; 6] = ["s1", "s2", "s3", "s4", "s5", "s6"];

/// Shortest and longest clip, seconds.
pub const MIN_SECONDS: f32 = 1.0;
pub const MAX_SECONDS: f32 = 3.0;

/// Bumped whenever the generator's output changes, so a cached corpus is regenerated.
pub const GENERATOR_VERSION: u32 = 1;

/// File in the corpus root recording the generator version and configuration.
pub const MARKER_FILE: &str = ".ser-engine-demo.json";

/// Peak level every clip is kept under (no clipping, and headroom for 16-bit rounding).
pub const PEAK_LIMIT: f32 = 0.95;

/// What to generate.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SynthConfig {
    /// Clips per class.
    pub per_class: usize,
    /// Samples per second.
    pub sample_rate: u32,
    /// Seed of every random choice.
    pub seed: u64,
}

impl Default for SynthConfig {
    fn default() -> Self {
        Self {
            per_class: 60,
            sample_rate: 16_000,
            seed: 42,
        }
    }
}

impl SynthConfig {
    /// Checks the configuration can be generated; errors say which value is wrong.
    pub fn validate(&self) -> Result<()> {
        if self.per_class == 0 || self.per_class > MAX_PER_CLASS {
            bail!(
                "--per-class must be between 1 and {MAX_PER_CLASS}, got {}",
                self.per_class
            );
        }
        // Formants and fricatives reach ~4.5 kHz; 8 kHz is the lowest rate with room for them
        // (higher formants are clamped below Nyquist).
        if !(8_000..=192_000).contains(&self.sample_rate) {
            bail!(
                "--sample-rate must be between 8000 and 192000 Hz, got {}",
                self.sample_rate
            );
        }
        Ok(())
    }
}

/// Clip indices share the 32-bit Philox `step` with the class (see `clip_step`).
const MAX_PER_CLASS: usize = 1 << 24;

/// Philox step of a clip's parameter stream: class in bits 24..27, index below; bit 31 marks the
/// per-sample noise stream of the same clip.
fn clip_step(class: usize, index: usize) -> u32 {
    ((class as u32) << 24) | (index as u32 & 0x00FF_FFFF)
}
const NOISE_STEP_BIT: u32 = 1 << 31;
// Offsets separating the noise sources inside one noise stream, in Philox counter blocks of
// four normals (`gaussian_noise`) or in `Stream::normal` indices (`PERIOD`); a clip has far
// fewer than 2^34 samples at any sensible rate, so the ranges never meet.
const ASPIRATION: u64 = 0;
const FLOOR: u64 = 1 << 34;
const CONSONANT: u64 = 2 << 34;
const PERIOD: u64 = 3 << 34;

/// `n` standard normals from Philox blocks `first_block..`: each block's four words give four
/// normals (both Box–Muller branches), four times cheaper than `Stream::normal` per sample.
fn gaussian_noise(stream: &Stream, first_block: u64, n: usize) -> Vec<f32> {
    let mut out = Vec::with_capacity(n + 3);
    for b in 0..n.div_ceil(4) as u64 {
        let w = philox_words(stream.seed, stream.purpose, stream.step, first_block + b);
        let (z0, z1) = box_muller(w[0], w[1]);
        let (z2, z3) = box_muller(w[2], w[3]);
        out.extend_from_slice(&[z0, z1, z2, z3]);
    }
    out.truncate(n);
    out
}

/// Sequential draws from one stream: uniforms use one word, normals two (Box–Muller), so the
/// draws never share words.
struct Draw {
    s: Stream,
    k: u64,
}

impl Draw {
    fn u(&mut self) -> f32 {
        let v = self.s.uniform(self.k);
        self.k += 1;
        v
    }
    fn range(&mut self, lo: f32, hi: f32) -> f32 {
        lo + (hi - lo) * self.u()
    }
    fn normal(&mut self) -> f32 {
        let (z, _) = box_muller(self.s.word(self.k), self.s.word(self.k + 1));
        self.k += 2;
        z
    }
    fn below(&mut self, n: u32) -> u32 {
        let v = self.s.below(self.k, n);
        self.k += 1;
        v
    }
}

/// A speaker: base F0 (Hz) and vocal-tract scale (formant frequencies relative to an adult male).
struct Voice {
    f0: f32,
    formant_scale: f32,
}

// Three lower and three higher voices; the F0 spread (100–250 Hz) is wider than the spread
// between emotions, so mean F0 alone cannot tell the emotion.
const VOICES: [Voice; 6] = [
    Voice {
        f0: 100.0,
        formant_scale: 1.00,
    },
    Voice {
        f0: 120.0,
        formant_scale: 0.96,
    },
    Voice {
        f0: 145.0,
        formant_scale: 1.05,
    },
    Voice {
        f0: 185.0,
        formant_scale: 1.13,
    },
    Voice {
        f0: 215.0,
        formant_scale: 1.18,
    },
    Voice {
        f0: 250.0,
        formant_scale: 1.22,
    },
];

/// Vowel formants F1..F4 (Hz, adult male; Peterson & Barney style): a, i, u, e, o.
const VOWELS: [[f32; 4]; 5] = [
    [730.0, 1090.0, 2440.0, 3400.0],
    [270.0, 2290.0, 3010.0, 3500.0],
    [300.0, 870.0, 2240.0, 3300.0],
    [530.0, 1840.0, 2480.0, 3400.0],
    [570.0, 840.0, 2410.0, 3300.0],
];
const BANDWIDTHS: [f32; 4] = [60.0, 90.0, 120.0, 175.0];

#[derive(Clone, Copy, PartialEq)]
enum Accent {
    /// rise-fall hump over each syllable nucleus; `signed` draws its direction per syllable
    Hump { signed: bool, alternate: bool },
    /// starts high at the onset and falls quickly
    Fall,
}

/// How an emotion shapes the voice (means; each clip varies around them).
struct Style {
    /// F0 relative to the speaker's
    f0_mult: f32,
    /// change of ln F0 from the start to the end of the utterance
    declination: f32,
    /// size of the per-syllable accent (ln F0)
    accent: f32,
    accent_shape: Accent,
    /// surprise: ln-F0 step up late in the utterance (0 = none)
    jump: f32,
    /// syllables per second
    rate: f32,
    /// loudness offset, dB
    level_db: f32,
    /// loudness change from start to end, dB
    tail_db: f32,
    /// open quotient of the glottal cycle
    open_q: f32,
    /// closing phase as a fraction of the open phase: short = abrupt closure = bright, tense
    close_frac: f32,
    /// aspiration noise relative to the pulse
    breath: f32,
    /// nucleus attack time, s
    attack: f32,
    /// nucleus amplitude at its end relative to its onset (percussive < 1)
    decay: f32,
    /// F1 multiplier (wider jaw opening raises F1)
    f1_mult: f32,
    /// bandwidth multiplier (breathy voice damps formants)
    bw_mult: f32,
}

const STYLES: [Style; 5] = [
    // neutral
    Style {
        f0_mult: 1.0,
        declination: -0.10,
        accent: 0.05,
        accent_shape: Accent::Hump {
            signed: true,
            alternate: false,
        },
        jump: 0.0,
        rate: 4.5,
        level_db: 0.0,
        tail_db: -2.0,
        open_q: 0.6,
        close_frac: 0.35,
        breath: 0.03,
        attack: 0.025,
        decay: 0.85,
        f1_mult: 1.0,
        bw_mult: 1.0,
    },
    // sadness
    Style {
        f0_mult: 0.88,
        declination: -0.35,
        accent: 0.03,
        accent_shape: Accent::Hump {
            signed: false,
            alternate: false,
        },
        jump: 0.0,
        rate: 3.0,
        level_db: -5.0,
        tail_db: -6.0,
        open_q: 0.75,
        close_frac: 0.5,
        breath: 0.12,
        attack: 0.07,
        decay: 0.8,
        f1_mult: 0.95,
        bw_mult: 1.4,
    },
    // happiness
    Style {
        f0_mult: 1.25,
        declination: 0.08,
        accent: 0.28,
        accent_shape: Accent::Hump {
            signed: false,
            alternate: true,
        },
        jump: 0.0,
        rate: 5.5,
        level_db: 2.0,
        tail_db: 0.0,
        open_q: 0.55,
        close_frac: 0.3,
        breath: 0.03,
        attack: 0.02,
        decay: 0.85,
        f1_mult: 1.05,
        bw_mult: 1.0,
    },
    // anger
    Style {
        f0_mult: 1.15,
        declination: -0.08,
        accent: 0.20,
        accent_shape: Accent::Fall,
        jump: 0.0,
        rate: 5.0,
        level_db: 5.0,
        tail_db: 0.0,
        open_q: 0.4,
        close_frac: 0.18,
        breath: 0.02,
        attack: 0.004,
        decay: 0.45,
        f1_mult: 1.12,
        bw_mult: 0.8,
    },
    // surprise
    Style {
        f0_mult: 1.05,
        declination: 0.0,
        accent: 0.04,
        accent_shape: Accent::Hump {
            signed: false,
            alternate: false,
        },
        jump: 0.5,
        rate: 4.5,
        level_db: 1.0,
        tail_db: 2.0,
        open_q: 0.55,
        close_frac: 0.3,
        breath: 0.05,
        attack: 0.015,
        decay: 0.9,
        f1_mult: 1.05,
        bw_mult: 1.0,
    },
];

/// One syllable: times in seconds from the clip start.
struct Syllable {
    start: f32,
    onset: f32,
    end: f32,
    vowel: usize,
    accent: f32,
    consonant: u32,
    consonant_gain: f32,
}

fn smoothstep(x: f32) -> f32 {
    let x = x.clamp(0.0, 1.0);
    x * x * (3.0 - 2.0 * x)
}

/// Raised-cosine ramp from 0 (x <= 0) to 1 (x >= 1).
fn ramp(x: f32) -> f32 {
    let x = x.clamp(0.0, 1.0);
    0.5 - 0.5 * (PI * x).cos()
}

/// Rosenberg glottal flow derivative at phase `p` in [0, 1): opening over `tp`, closing over
/// `tn`, closed after. The step at closure (height π/(2 tn)) carries the high frequencies.
fn glottal_derivative(p: f32, tp: f32, tn: f32) -> f32 {
    if p < tp {
        0.5 * PI / tp * (PI * p / tp).sin()
    } else if p < tp + tn {
        -0.5 * PI / tn * (0.5 * PI * (p - tp) / tn).sin()
    } else {
        0.0
    }
}

/// Two-pole resonator with unity gain at DC (Klatt 1980).
#[derive(Clone, Copy, Default)]
struct Resonator {
    a: f32,
    b: f32,
    c: f32,
    y1: f32,
    y2: f32,
}

impl Resonator {
    fn tune(&mut self, freq: f32, bw: f32, sr: f32) {
        let r = (-PI * bw / sr).exp();
        self.c = -r * r;
        self.b = 2.0 * r * (2.0 * PI * freq / sr).cos();
        self.a = 1.0 - self.b - self.c;
    }
    #[inline]
    fn run(&mut self, x: f32) -> f32 {
        let y = self.a * x + self.b * self.y1 + self.c * self.y2;
        self.y2 = self.y1;
        self.y1 = y;
        y
    }
}

/// Samples between formant-coefficient updates (2 ms at 16 kHz); formants move slowly.
const BLOCK: usize = 32;

/// Clip `index` of class `class` (index into [`CLASSES`]): mono samples in
/// [-`PEAK_LIMIT`, `PEAK_LIMIT`] at `cfg.sample_rate`, between [`MIN_SECONDS`] and
/// [`MAX_SECONDS`] long. Deterministic in (cfg.seed, class, index, cfg.sample_rate).
pub fn synth_clip(class: usize, index: usize, cfg: &SynthConfig) -> Vec<f32> {
    let class = class % CLASSES.len();
    let style = &STYLES[class];
    let voice = &VOICES[index % VOICES.len()];
    let sr = cfg.sample_rate as f32;
    let step = clip_step(class, index);
    let mut d = Draw {
        s: Stream::new(cfg.seed, Purpose::Synth, step),
        k: 0,
    };
    let noise = Stream::new(cfg.seed, Purpose::Synth, step | NOISE_STEP_BIT);

    // --- per-clip variation -------------------------------------------------------------
    let duration = d.range(MIN_SECONDS, MAX_SECONDS);
    let n = ((duration * sr).round() as usize).max(1);
    let duration = n as f32 / sr;
    let f0_clip = voice.f0 * style.f0_mult * (0.08 * d.normal()).exp();
    let formant_scale = voice.formant_scale * (0.03 * d.normal()).exp();
    let rate = style.rate * (0.12 * d.normal()).exp();
    let level_db = -24.0 + style.level_db + d.range(-6.0, 6.0);
    let floor_db = d.range(-65.0, -42.0);
    let accent = style.accent * d.range(0.7, 1.3);
    let declination = style.declination + 0.05 * d.normal();
    let jump = style.jump * d.range(0.7, 1.2);
    let open_q = (style.open_q + d.range(-0.05, 0.05)).clamp(0.3, 0.9);
    let tn = open_q * style.close_frac;
    let tp = open_q - tn;
    let breath = style.breath * d.range(0.6, 1.4);
    let lead = d.range(0.05, 0.15);
    let trail = d.range(0.05, 0.2);
    let speech = (duration - lead - trail).max(0.3);
    let n_syl = ((speech * rate).round() as usize).max(2);
    let slot = speech / n_syl as f32;
    let jump_at = lead + speech * d.range(0.5, 0.75);
    let jump_width = d.range(0.08, 0.15);

    // --- syllables ----------------------------------------------------------------------
    let mut bounds: Vec<f32> = (0..=n_syl)
        .map(|i| {
            let jitter = if i == 0 || i == n_syl {
                0.0
            } else {
                0.3 * slot * (d.u() - 0.5)
            };
            lead + i as f32 * slot + jitter
        })
        .collect();
    bounds[n_syl] = lead + speech;
    let syllables: Vec<Syllable> = (0..n_syl)
        .map(|i| {
            let (start, end) = (bounds[i], bounds[i + 1]);
            let onset = start + (end - start) * d.range(0.2, 0.35);
            let strength = d.range(0.6, 1.4);
            let sign = match style.accent_shape {
                Accent::Hump { signed: true, .. } if d.u() < 0.5 => -1.0,
                _ => 1.0,
            };
            let alternate = match style.accent_shape {
                Accent::Hump {
                    alternate: true, ..
                } if i % 2 == 1 => 0.6,
                _ => 1.0,
            };
            Syllable {
                start,
                onset,
                end,
                vowel: d.below(VOWELS.len() as u32) as usize,
                accent: accent * strength * sign * alternate,
                consonant: d.below(3),
                consonant_gain: d.range(0.1, 0.3),
            }
        })
        .collect();

    // --- synthesis ----------------------------------------------------------------------
    let aspiration = gaussian_noise(&noise, ASPIRATION, n);
    let consonant_noise = gaussian_noise(&noise, CONSONANT, n);
    let ln_decay = style.decay.ln();
    let ln_tail = style.tail_db * std::f32::consts::LN_10 / 20.0;
    let mut out = vec![0f32; n];
    let mut res = [Resonator::default(); 4];
    let mut phase = 0f32;
    let mut period = 0u64;
    let mut jitter = 1f32;
    let mut shimmer = 1f32;
    let mut prev_cnoise = 0f32;
    let release = 0.03f32;
    let mut syl = 0usize;
    for (b0, chunk) in out.chunks_mut(BLOCK).enumerate() {
        let t_block = (b0 * BLOCK) as f32 / sr;
        while syl + 1 < syllables.len() && t_block >= syllables[syl].end {
            syl += 1;
        }
        // Formants: glide from the previous vowel over the first 40 ms of the nucleus.
        let s = &syllables[syl];
        let cur = VOWELS[s.vowel];
        let prev = if syl > 0 {
            VOWELS[syllables[syl - 1].vowel]
        } else {
            cur
        };
        let g = smoothstep((t_block - s.onset) / 0.04);
        for (f, r) in res.iter_mut().enumerate() {
            let mut freq = (prev[f] + (cur[f] - prev[f]) * g) * formant_scale;
            if f == 0 {
                freq *= style.f1_mult;
            }
            r.tune(freq.min(0.45 * sr), BANDWIDTHS[f] * style.bw_mult, sr);
        }
        for (j, y) in chunk.iter_mut().enumerate() {
            let i = b0 * BLOCK + j;
            let t = i as f32 / sr;
            while syl + 1 < syllables.len() && t >= syllables[syl].end {
                syl += 1;
            }
            let s = &syllables[syl];
            let u = ((t - lead) / speech).clamp(0.0, 1.0);
            // Voicing envelope of the nucleus.
            let in_speech = t >= s.start && t < s.end;
            let nuc = s.end - s.onset;
            let sn = ((t - s.onset) / nuc).clamp(0.0, 1.0);
            let venv = if in_speech && t >= s.onset {
                ramp((t - s.onset) / style.attack)
                    * ramp((s.end - t) / release)
                    * (sn * ln_decay + u * ln_tail).exp()
            } else {
                0.0
            };
            // F0 contour (ln Hz).
            let accent_term = match style.accent_shape {
                Accent::Hump { .. } => s.accent * (PI * sn).sin(),
                Accent::Fall => s.accent * (1.0 - sn) * (1.0 - sn),
            };
            let lf0 = f0_clip.ln()
                + declination * (u - 0.5)
                + accent_term
                + jump * smoothstep((t - jump_at) / jump_width);
            let f0 = lf0.exp() * jitter;
            phase += f0 / sr;
            if phase >= 1.0 {
                phase -= phase.floor();
                period += 1;
                // Per-period jitter (~1% F0) and shimmer (~0.4 dB), as in natural voice.
                jitter = (0.01 * noise.normal(PERIOD + 2 * period)).exp();
                shimmer = (0.05 * noise.normal(PERIOD + 2 * period + 1)).exp();
            }
            let pulse = glottal_derivative(phase, tp, tn) * tn.max(0.1);
            let open = if phase < open_q { 1.0 } else { 0.4 };
            let asp = breath * 3.0 * open * aspiration[i];
            let mut v = (pulse * shimmer + asp) * venv;
            for r in res.iter_mut() {
                v = r.run(v);
            }
            // Consonant before the nucleus: closure (silence), fricative (high-passed noise
            // over the whole gap) or plosive (closure then a 12 ms burst).
            let cnoise = consonant_noise[i];
            let hp = cnoise - prev_cnoise;
            prev_cnoise = cnoise;
            let cenv = if in_speech && t < s.onset {
                let x = (t - s.start) / (s.onset - s.start);
                match s.consonant {
                    1 => (PI * x).sin(),
                    2 if s.onset - t < 0.012 => 1.5,
                    _ => 0.0,
                }
            } else {
                0.0
            };
            *y = v + s.consonant_gain * cenv * hp;
        }
    }

    // --- level, noise floor, peak guard -------------------------------------------------
    let rms = (out.iter().map(|x| (*x as f64).powi(2)).sum::<f64>() / n as f64).sqrt() as f32;
    let gain = if rms > 0.0 {
        10f32.powf(level_db / 20.0) / rms
    } else {
        0.0
    };
    let floor = 10f32.powf(floor_db / 20.0);
    for (y, z) in out.iter_mut().zip(gaussian_noise(&noise, FLOOR, n)) {
        *y = *y * gain + floor * z;
    }
    let peak = out.iter().fold(0f32, |m, x| m.max(x.abs()));
    if peak > PEAK_LIMIT {
        let k = PEAK_LIMIT / peak;
        // The clamp only absorbs the last-ulp rounding of the product.
        out.iter_mut()
            .for_each(|y| *y = (*y * k).clamp(-PEAK_LIMIT, PEAK_LIMIT));
    }
    out
}

/// File name of a clip: `<class>_<speaker>_<nnn>.wav`.
pub fn clip_file_name(class: usize, index: usize) -> String {
    format!(
        "{}_{}_{:03}.wav",
        CLASSES[class % CLASSES.len()],
        SPEAKERS[index % SPEAKERS.len()],
        index
    )
}

fn marker_json(cfg: &SynthConfig) -> serde_json::Value {
    serde_json::json!({
        "generator": "ser-engine synth",
        "generator_version": GENERATOR_VERSION,
        "per_class": cfg.per_class,
        "sample_rate": cfg.sample_rate,
        "seed": cfg.seed,
    })
}

/// Whether `dir` holds a complete corpus written by this generator version with `cfg`.
pub fn corpus_is_current(dir: &Path, cfg: &SynthConfig) -> bool {
    fs::read_to_string(dir.join(MARKER_FILE))
        .ok()
        .and_then(|s| serde_json::from_str::<serde_json::Value>(&s).ok())
        .is_some_and(|v| v == marker_json(cfg))
}

fn readme_text(cfg: &SynthConfig) -> String {
    format!(
        "Synthetic demo corpus of emotional prosody, written by `ser-engine synth`\n\
         (generator version {GENERATOR_VERSION}, seed {seed}, {sr} Hz, {per} clips per class).\n\
         \n\
         Layout: one folder per class ({classes}); files <class>_<speaker>_<nnn>.wav,\n\
         mono 16-bit PCM, {min}-{max} s long. Speakers s1..s6 differ in base F0 (100-250 Hz)\n\
         and formant scale; clip nnn is spoken by speaker s(nnn mod 6 + 1).\n\
         \n\
         Each clip is a source-filter voice (Rosenberg glottal pulses, jitter, shimmer,\n\
         aspiration noise, four formant resonators) shaped into syllables. The emotions\n\
         differ in prosody as acted speech does:\n\
         - neutral: mid F0, flat contour with mild declination, moderate rate and level\n\
         - sadness: low F0, falling contour, slow, breathy and dark, soft onsets, fading\n\
         - happiness: high F0, wide rise-fall accent on every syllable, fast\n\
         - anger: high F0 falling sharply from each onset, loud, tense/bright voice,\n\
           fast, abrupt percussive onsets\n\
         - surprise: a sharp upward F0 jump late in the utterance\n\
         Every clip also varies speaker F0, syllable rate, loudness (+-6 dB), length,\n\
         vowels, consonants and noise floor, so no single global statistic separates the\n\
         classes; the spectro-temporal pattern does.\n\
         \n\
         Regenerate with `ser-engine synth --out <dir>`; it is fully deterministic.\n",
        seed = cfg.seed,
        sr = cfg.sample_rate,
        per = cfg.per_class,
        classes = CLASSES.join(", "),
        min = MIN_SECONDS,
        max = MAX_SECONDS,
    )
}

fn write_wav(path: &Path, samples: &[f32], sample_rate: u32) -> Result<()> {
    let spec = hound::WavSpec {
        channels: 1,
        sample_rate,
        bits_per_sample: 16,
        sample_format: hound::SampleFormat::Int,
    };
    let mut w = hound::WavWriter::create(path, spec)
        .with_context(|| format!("{}: cannot create", path.display()))?;
    for &x in samples {
        // Same scaling the decoder inverts (sample / 32768).
        let q = (x * 32768.0).round().clamp(-32768.0, 32767.0) as i16;
        w.write_sample(q)
            .with_context(|| format!("{}: write failed", path.display()))?;
    }
    w.finalize()
        .with_context(|| format!("{}: write failed", path.display()))
}

/// The first entry of an earlier corpus folder that the generator does not write (any
/// version or size: class folders of `<class>_<speaker>_<nnn>.wav`, README.txt, the marker).
fn foreign_entry(dir: &Path) -> Result<Option<PathBuf>> {
    let read = |d: &Path| fs::read_dir(d).with_context(|| format!("{}: cannot read", d.display()));
    for e in read(dir)? {
        let e = e.with_context(|| format!("{}: cannot read", dir.display()))?;
        let name = e.file_name().to_string_lossy().to_string();
        let path = e.path();
        if name == MARKER_FILE || name == "README.txt" {
            if path.is_file() {
                continue;
            }
            return Ok(Some(path));
        }
        let Some(class) = CLASSES.iter().find(|c| **c == name) else {
            return Ok(Some(path));
        };
        if !path.is_dir() {
            return Ok(Some(path));
        }
        for f in read(&path)? {
            let f = f.with_context(|| format!("{}: cannot read", path.display()))?;
            let fname = f.file_name().to_string_lossy().to_string();
            let ours = fname
                .strip_prefix(&format!("{class}_"))
                .and_then(|r| r.strip_suffix(".wav"))
                .and_then(|r| r.split_once('_'))
                .is_some_and(|(spk, n)| {
                    SPEAKERS.contains(&spk)
                        && !n.is_empty()
                        && n.bytes().all(|b| b.is_ascii_digit())
                });
            if !ours || !f.path().is_file() {
                return Ok(Some(f.path()));
            }
        }
    }
    Ok(None)
}

/// Writes the corpus to `dir`: `dir/<class>/<class>_<speaker>_<nnn>.wav` (`cfg.per_class` per
/// class), `dir/README.txt` and the version marker. Everything is written to a temporary folder
/// beside `dir` and renamed into place, so `dir` is never seen half-written. An existing `dir` is
/// replaced only when it is empty or a corpus written by this generator (it has the marker);
/// anything else is an error, so user data is never overwritten.
/// Files in `dir` that this generator did not write are never deleted: their presence is an
/// error naming one (the demo cache, which only ser-engine writes, is regenerated whole by
/// [`ensure_corpus_at`]).
pub fn write_corpus(dir: &Path, cfg: &SynthConfig, progress: bool) -> Result<()> {
    write_corpus_in(dir, cfg, progress, true)
}

fn write_corpus_in(
    dir: &Path,
    cfg: &SynthConfig,
    progress: bool,
    keep_foreign: bool,
) -> Result<()> {
    cfg.validate()?;
    let replace_existing = if dir.exists() {
        if !dir.is_dir() {
            bail!("{}: exists and is not a folder", dir.display());
        }
        let empty = fs::read_dir(dir)
            .with_context(|| format!("{}: cannot read", dir.display()))?
            .next()
            .is_none();
        if !empty && !dir.join(MARKER_FILE).is_file() {
            bail!(
                "{}: exists and is not a demo corpus written by ser-engine (no {MARKER_FILE}); \
                 choose another folder or remove it",
                dir.display()
            );
        }
        if let Some(foreign) = keep_foreign
            .then(|| foreign_entry(dir))
            .transpose()?
            .flatten()
        {
            bail!(
                "{}: holds {}, which `synth` did not write; replacing the corpus would delete \
                 it (move it away, or choose another folder)",
                dir.display(),
                foreign.display()
            );
        }
        true
    } else {
        false
    };
    let parent = match dir.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    fs::create_dir_all(&parent)
        .with_context(|| format!("{}: cannot create folder", parent.display()))?;
    // Dropped (and deleted) on any error below; after the rename it no longer exists.
    let tmp = tempfile::Builder::new()
        .prefix(".ser-engine-synth-")
        .tempdir_in(&parent)
        .with_context(|| format!("{}: cannot create a temporary folder", parent.display()))?;
    for class in CLASSES {
        let p = tmp.path().join(class);
        fs::create_dir(&p).with_context(|| format!("{}: cannot create", p.display()))?;
    }

    let total = CLASSES.len() * cfg.per_class;
    let bar = if progress {
        let b = indicatif::ProgressBar::new(total as u64);
        if let Ok(style) = indicatif::ProgressStyle::with_template(
            "synth {bar:30} {pos}/{len} clips {elapsed_precise}",
        ) {
            b.set_style(style);
        }
        b
    } else {
        indicatif::ProgressBar::hidden()
    };
    (0..total).into_par_iter().try_for_each(|k| -> Result<()> {
        let (class, index) = (k / cfg.per_class, k % cfg.per_class);
        let samples = synth_clip(class, index, cfg);
        let path = tmp
            .path()
            .join(CLASSES[class])
            .join(clip_file_name(class, index));
        write_wav(&path, &samples, cfg.sample_rate)?;
        bar.inc(1);
        Ok(())
    })?;
    bar.finish_and_clear();

    let readme = tmp.path().join("README.txt");
    fs::write(&readme, readme_text(cfg))
        .with_context(|| format!("{}: cannot write", readme.display()))?;
    // The marker goes last: its presence means the corpus is complete.
    let marker = tmp.path().join(MARKER_FILE);
    let text = serde_json::to_string_pretty(&marker_json(cfg))?;
    fs::write(&marker, text).with_context(|| format!("{}: cannot write", marker.display()))?;

    if replace_existing {
        // Move the old corpus aside, swap the new one in, then delete the old one.
        let trash = tempfile::Builder::new()
            .prefix(".ser-engine-synth-old-")
            .tempdir_in(&parent)
            .with_context(|| format!("{}: cannot create a temporary folder", parent.display()))?;
        let old = trash.path().join("old");
        fs::rename(dir, &old)
            .with_context(|| format!("{}: cannot move the old corpus aside", dir.display()))?;
        if let Err(e) = fs::rename(tmp.path(), dir) {
            // Put the old one back so a failure leaves things as they were.
            let _ = fs::rename(&old, dir);
            return Err(e).with_context(|| format!("{}: cannot move into place", dir.display()));
        }
    } else {
        fs::rename(tmp.path(), dir)
            .with_context(|| format!("{}: cannot move into place", dir.display()))?;
    }
    Ok(())
}

/// Where the demo corpus lives: `$SER_ENGINE_DEMO_DIR` when set, else
/// `<cache>/ser-engine/demo-v1` with `<cache>` = `$XDG_CACHE_HOME`, or `$HOME/.cache`, or the
/// system temporary folder.
pub fn demo_corpus_dir() -> PathBuf {
    match std::env::var_os("SER_ENGINE_DEMO_DIR").filter(|v| !v.is_empty()) {
        Some(d) => PathBuf::from(d),
        None => crate::cache::user_cache_dir().join("demo-v1"),
    }
}

/// Makes sure `dir` holds the corpus for `cfg` by this generator version, writing it when
/// missing or stale; returns `dir`.
pub fn ensure_corpus_at(dir: &Path, cfg: &SynthConfig, progress: bool) -> Result<PathBuf> {
    if !corpus_is_current(dir, cfg) {
        if progress {
            eprintln!("writing the demo corpus to {}", dir.display());
        }
        write_corpus_in(dir, cfg, progress, false)?;
    }
    Ok(dir.to_path_buf())
}

/// The default demo corpus in [`demo_corpus_dir`], written on first use and reused after
/// (regenerated when the generator version changes).
pub fn ensure_demo_corpus(progress: bool) -> Result<PathBuf> {
    ensure_corpus_at(&demo_corpus_dir(), &SynthConfig::default(), progress)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn glottal_pulse_integrates_to_zero() {
        // The flow returns to zero at closure, so its derivative sums to ~0 over a period; a
        // sign or phase error in either branch breaks this. Tolerance: Riemann-sum error of
        // a smooth function at 10^5 points, far below 1e-3.
        let (tp, tn) = (0.4, 0.2);
        let m = 100_000;
        let s: f32 = (0..m)
            .map(|i| glottal_derivative((i as f32 + 0.5) / m as f32, tp, tn) / m as f32)
            .sum();
        assert!(s.abs() < 1e-3, "{s}");
    }

    #[test]
    fn resonator_has_unity_dc_gain_and_peaks_at_its_frequency() {
        let sr = 16_000.0;
        let mut r = Resonator::default();
        r.tune(1000.0, 100.0, sr);
        let mut y = 0.0;
        for _ in 0..5000 {
            y = r.run(1.0);
        }
        // Converged step response (pole radius 0.98, 5000 steps: residual < 1e-30).
        assert!((y - 1.0).abs() < 1e-4, "{y}");
        // Steady-state amplitude of a sinusoid at f, by peak over the last period.
        let gain_at = |f: f32| {
            let mut r2 = Resonator::default();
            r2.tune(1000.0, 100.0, sr);
            let mut peak = 0f32;
            for i in 0..8000 {
                let out = r2.run((2.0 * PI * f * i as f32 / sr).sin());
                if i > 7000 {
                    peak = peak.max(out.abs());
                }
            }
            peak
        };
        assert!(gain_at(1000.0) > 3.0 * gain_at(500.0));
        assert!(gain_at(1000.0) > 3.0 * gain_at(2000.0));
    }

    #[test]
    fn config_validation_rejects_bad_values() {
        let ok = SynthConfig::default();
        assert!(ok.validate().is_ok());
        for bad in [
            SynthConfig {
                per_class: 0,
                ..ok.clone()
            },
            SynthConfig {
                sample_rate: 4000,
                ..ok.clone()
            },
        ] {
            assert!(bad.validate().is_err());
        }
    }
}
