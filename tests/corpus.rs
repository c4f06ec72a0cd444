//! Corpus layouts: a tiny fake corpus per format (short WAVs written by hound, the FLAC
//! fixture for KSUEmotions), auto-detection, CSV manifests, regex labels, unreadable files,
//! errors; and the real EYASE corpus when ../shared/data is present.

use ser_engine::audio::corpus::{load_corpus, Corpus, CorpusFormat, CorpusOptions};
use std::path::{Path, PathBuf};

/// Writes a short 16 kHz mono 16-bit WAV of `n` samples at `root/rel`.
fn wav(root: &Path, rel: &str, n: usize) {
    let p = root.join(rel);
    std::fs::create_dir_all(p.parent().unwrap()).unwrap();
    let spec = hound::WavSpec {
        channels: 1,
        sample_rate: 16_000,
        bits_per_sample: 16,
        sample_format: hound::SampleFormat::Int,
    };
    let mut w = hound::WavWriter::create(&p, spec).unwrap();
    for i in 0..n {
        w.write_sample((i % 50) as i16 * 100).unwrap();
    }
    w.finalize().unwrap();
}

fn flac(root: &Path, rel: &str) {
    let p = root.join(rel);
    std::fs::create_dir_all(p.parent().unwrap()).unwrap();
    let src =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/audio/tone16k_mono16.flac");
    std::fs::copy(src, p).unwrap();
}

fn load(root: &Path, format: CorpusFormat, regex: Option<&str>) -> anyhow::Result<Corpus> {
    load_corpus(
        root,
        &CorpusOptions {
            format,
            label_regex: regex.map(str::to_string),
        },
    )
}

/// (file name, label, speaker) of every clip, in clip order.
fn summary(c: &Corpus) -> Vec<(String, String, Option<String>)> {
    c.clips
        .iter()
        .map(|k| {
            (
                k.path.file_name().unwrap().to_string_lossy().to_string(),
                k.label.clone(),
                k.speaker.clone(),
            )
        })
        .collect()
}

fn s(x: &str) -> String {
    x.to_string()
}

fn some(x: &str) -> Option<String> {
    Some(x.to_string())
}

#[test]
fn folders_with_spaces_parentheses_and_nesting() {
    let d = tempfile::tempdir().unwrap();
    wav(d.path(), "anger/a 1 (2).wav", 160);
    wav(d.path(), "anger/deeper/b.WAV", 320);
    wav(d.path(), "happy (x)/c (1).wav", 160);
    wav(d.path(), "stray.wav", 160);
    wav(d.path(), ".hidden/d.wav", 160);
    wav(d.path(), "anger/._e.wav", 160);
    std::fs::write(d.path().join("anger/notes.txt"), "not audio").unwrap();
    let c = load(d.path(), CorpusFormat::Auto, None).unwrap();
    assert_eq!(c.format, CorpusFormat::Folders);
    assert_eq!(c.labels, vec![s("anger"), s("happy (x)")]);
    assert_eq!(c.class_counts(), vec![2, 1]);
    assert!(c.speakers().is_empty());
    assert_eq!(
        summary(&c),
        vec![
            (s("a 1 (2).wav"), s("anger"), None),
            (s("b.WAV"), s("anger"), None),
            (s("c (1).wav"), s("happy (x)"), None)
        ]
    );
    // Durations and rates come from the headers.
    assert_eq!(c.clips[1].sample_rate, 16_000);
    assert!((c.clips[1].duration_s - 0.02).abs() < 1e-12);
    assert!((c.total_duration_s() - 0.04).abs() < 1e-12);
    // The file outside any class folder is reported, not used.
    assert_eq!(c.unreadable.len(), 1);
    assert!(c.unreadable[0].0.ends_with("stray.wav"));
    assert!(
        c.unreadable[0].1.contains("class folder"),
        "{:?}",
        c.unreadable
    );
    assert_eq!(c.label_index("happy (x)"), Some(1));
    assert_eq!(c.label_index("joy"), None);
}

#[test]
fn unreadable_headers_are_listed_not_fatal() {
    let d = tempfile::tempdir().unwrap();
    wav(d.path(), "a/ok.wav", 160);
    wav(d.path(), "b/ok.wav", 160);
    std::fs::write(d.path().join("a/broken.wav"), "RIFF....WAVEnope").unwrap();
    wav(d.path(), "b/cut.wav", 1000);
    let cut = d.path().join("b/cut.wav");
    let bytes = std::fs::read(&cut).unwrap();
    std::fs::write(&cut, &bytes[..bytes.len() - 10]).unwrap();
    let c = load(d.path(), CorpusFormat::Folders, None).unwrap();
    assert_eq!(c.clips.len(), 2);
    let names: Vec<_> = c
        .unreadable
        .iter()
        .map(|(p, _)| p.file_name().unwrap().to_string_lossy().to_string())
        .collect();
    assert_eq!(names, vec![s("broken.wav"), s("cut.wav")]);
    assert!(
        c.unreadable[1].1.contains("truncated"),
        "{:?}",
        c.unreadable
    );
}

#[test]
fn csv_manifest_relative_paths_speakers_and_missing_files() {
    let d = tempfile::tempdir().unwrap();
    wav(d.path(), "audio/x (1).wav", 160);
    wav(d.path(), "audio/y.wav", 160);
    wav(d.path(), "audio/z.wav", 160);
    std::fs::create_dir_all(d.path().join("meta")).unwrap();
    let csv = d.path().join("meta/list.csv");
    std::fs::write(
        &csv,
        "path,label,speaker\n../audio/x (1).wav,anger,s1\n../audio/y.wav,neutral,s2\n\
         \"../audio/z.wav\",anger,\n../audio/gone.wav,anger,s1\n",
    )
    .unwrap();
    let c = load(&csv, CorpusFormat::Auto, None).unwrap();
    assert_eq!(c.format, CorpusFormat::Csv);
    assert_eq!(
        summary(&c),
        vec![
            (s("x (1).wav"), s("anger"), some("s1")),
            (s("y.wav"), s("neutral"), some("s2")),
            (s("z.wav"), s("anger"), None)
        ]
    );
    assert_eq!(c.speakers(), vec![s("s1"), s("s2")]);
    assert_eq!(c.unreadable.len(), 1);
    assert!(c.unreadable[0].0.ends_with("gone.wav"));
    assert!(c.unreadable[0].1.contains("line 5"), "{:?}", c.unreadable);
    // Two columns only, explicit format.
    std::fs::write(&csv, "label,path\nhappy,../audio/y.wav\n").unwrap();
    let c = load(&csv, CorpusFormat::Csv, None).unwrap();
    assert_eq!(summary(&c), vec![(s("y.wav"), s("happy"), None)]);
}

#[test]
fn bad_csv_is_an_error_with_the_line() {
    let d = tempfile::tempdir().unwrap();
    wav(d.path(), "y.wav", 160);
    let csv = d.path().join("m.csv");
    std::fs::write(&csv, "path,label\ny.wav,anger\ny.wav\n").unwrap();
    let e = format!("{:#}", load(&csv, CorpusFormat::Auto, None).unwrap_err());
    assert!(e.contains("line 3") && e.contains("m.csv"), "{e}");
    std::fs::write(&csv, "file,emotion\ny.wav,anger\n").unwrap();
    let e = format!("{:#}", load(&csv, CorpusFormat::Auto, None).unwrap_err());
    assert!(e.contains("line 1") && e.contains("path and label"), "{e}");
    std::fs::write(&csv, "path,label\ny.wav,anger\n\"y.wav,anger\n").unwrap();
    assert!(load(&csv, CorpusFormat::Auto, None).is_err());
}

#[test]
fn ksu_layout_from_any_root_level() {
    let d = tempfile::tempdir().unwrap();
    let base = "ksu_emotions/data/SPEECH";
    flac(
        d.path(),
        &format!("{base}/Phase_1/E00/D05E00P001S01T01.flac"),
    );
    flac(
        d.path(),
        &format!("{base}/Phase_1/E04/D05E04P101S02T01.flac"),
    );
    flac(
        d.path(),
        &format!("{base}/Phase_2/E05/D05E05P001S03T02.flac"),
    );
    wav(
        d.path(),
        &format!("{base}/Phase_2/E03/D05E03P102S01T01.wav"),
        160,
    );
    for root in ["", "ksu_emotions", "ksu_emotions/data/SPEECH"] {
        let c = load(&d.path().join(root), CorpusFormat::Auto, None).unwrap();
        assert_eq!(c.format, CorpusFormat::Ksu, "root {root}");
        assert_eq!(
            summary(&c),
            vec![
                (s("D05E00P001S01T01.flac"), s("neutral"), some("P001")),
                (s("D05E04P101S02T01.flac"), s("questioning"), some("P101")),
                (s("D05E03P102S01T01.wav"), s("surprise"), some("P102")),
                (s("D05E05P001S03T02.flac"), s("anger"), some("P001")),
            ]
        );
        assert_eq!(c.clips[0].sample_rate, 16_000);
        assert!((c.clips[0].duration_s - 0.25).abs() < 1e-12);
    }
    let c = load(
        &d.path().join(base).join("Phase_1"),
        CorpusFormat::Ksu,
        None,
    )
    .unwrap();
    assert_eq!(c.labels, vec![s("neutral"), s("questioning")]);
}

#[test]
fn kedas_folders_and_regex_labels() {
    let d = tempfile::tempdir().unwrap();
    wav(d.path(), "anger/S01_take1.wav", 160);
    wav(d.path(), "neutral/S02_take1.wav", 160);
    let c = load(d.path(), CorpusFormat::Kedas, None).unwrap();
    assert_eq!(c.format, CorpusFormat::Kedas);
    assert_eq!(c.labels, vec![s("anger"), s("neutral")]);

    let r = d.path().join("flat");
    wav(&r, "spk7 - sad (3).wav", 160);
    wav(&r, "spk8 - happy (1).wav", 160);
    wav(&r, "readme.wav", 160);
    let re = r"^(?P<speaker>spk\d+) - (?P<label>[a-z]+) \(\d+\)\.wav$";
    for f in [CorpusFormat::Auto, CorpusFormat::Regex, CorpusFormat::Kedas] {
        let c = load(&r, f, Some(re)).unwrap();
        assert_eq!(c.format, CorpusFormat::Regex);
        assert_eq!(
            summary(&c),
            vec![
                (s("spk7 - sad (3).wav"), s("sad"), some("spk7")),
                (s("spk8 - happy (1).wav"), s("happy"), some("spk8")),
            ]
        );
        assert_eq!(c.unreadable.len(), 1);
        assert!(
            c.unreadable[0].1.contains("does not match"),
            "{:?}",
            c.unreadable
        );
    }
    // The regex sees the path relative to the root, with '/'.
    let c = load(d.path(), CorpusFormat::Regex, Some(r"^(?P<label>[a-z]+)/S")).unwrap();
    assert_eq!(c.labels, vec![s("anger"), s("neutral")]);
    assert_eq!(c.unreadable.len(), 3); // the files under flat/
    let e = format!(
        "{:#}",
        load(&r, CorpusFormat::Regex, Some(r"(?P<emo>\w+)")).unwrap_err()
    );
    assert!(e.contains("no named group 'label'"), "{e}");
    let e = format!("{:#}", load(&r, CorpusFormat::Regex, None).unwrap_err());
    assert!(e.contains("needs --label-regex"), "{e}");
    assert!(load(&r, CorpusFormat::Emodb, Some(re)).is_err());
}

/// Writes `files` under a fresh root, loads it with Auto and with `format`, and checks both
/// give `format` and `want`.
fn check_named(format: CorpusFormat, files: &[&str], want: Vec<(&str, &str, &str)>) {
    let d = tempfile::tempdir().unwrap();
    for f in files {
        wav(d.path(), f, 160);
    }
    for f in [CorpusFormat::Auto, format] {
        let c = load(d.path(), f, None).unwrap();
        assert_eq!(c.format, format);
        let want: Vec<_> = want
            .iter()
            .map(|(n, l, sp)| (s(n), s(l), some(sp)))
            .collect();
        assert_eq!(summary(&c), want, "{format:?}");
        assert!(c.unreadable.is_empty(), "{:?}", c.unreadable);
    }
}

#[test]
fn emodb() {
    check_named(
        CorpusFormat::Emodb,
        &[
            "wav/03a01Fa.wav",
            "wav/03a01Wa.wav",
            "wav/16b10Lb.wav",
            "wav/08a02Ab.wav",
            "wav/09a01Ea.wav",
            "wav/10a01Ta.wav",
            "wav/11a01Nc.wav",
        ],
        vec![
            ("03a01Fa.wav", "happiness", "03"),
            ("03a01Wa.wav", "anger", "03"),
            ("08a02Ab.wav", "fear", "08"),
            ("09a01Ea.wav", "disgust", "09"),
            ("10a01Ta.wav", "sadness", "10"),
            ("11a01Nc.wav", "neutral", "11"),
            ("16b10Lb.wav", "boredom", "16"),
        ],
    );
}

#[test]
fn ravdess() {
    check_named(
        CorpusFormat::Ravdess,
        &[
            "Actor_12/03-01-05-01-02-01-12.wav",
            "Actor_01/03-01-01-01-01-01-01.wav",
            "Actor_01/03-01-02-02-01-01-01.wav",
            "Actor_01/03-01-08-02-01-01-01.wav",
        ],
        vec![
            ("03-01-01-01-01-01-01.wav", "neutral", "01"),
            ("03-01-02-02-01-01-01.wav", "calm", "01"),
            ("03-01-08-02-01-01-01.wav", "surprise", "01"),
            ("03-01-05-01-02-01-12.wav", "anger", "12"),
        ],
    );
}

#[test]
fn cremad() {
    check_named(
        CorpusFormat::Cremad,
        &[
            "AudioWAV/1001_DFA_ANG_XX.wav",
            "AudioWAV/1002_IEO_DIS_HI.wav",
            "AudioWAV/1003_TIE_FEA_LO.wav",
            "AudioWAV/1091_WSI_SAD_XX.wav",
        ],
        vec![
            ("1001_DFA_ANG_XX.wav", "anger", "1001"),
            ("1002_IEO_DIS_HI.wav", "disgust", "1002"),
            ("1003_TIE_FEA_LO.wav", "fear", "1003"),
            ("1091_WSI_SAD_XX.wav", "sadness", "1091"),
        ],
    );
}

#[test]
fn savee_both_namings() {
    check_named(
        CorpusFormat::Savee,
        &[
            "AudioData/DC_a01.wav",
            "AudioData/JE_sa03.wav",
            "AudioData/KL_su15.wav",
            "AudioData/JK_n30.wav",
        ],
        vec![
            ("DC_a01.wav", "anger", "DC"),
            ("JE_sa03.wav", "sadness", "JE"),
            ("JK_n30.wav", "neutral", "JK"),
            ("KL_su15.wav", "surprise", "KL"),
        ],
    );
    check_named(
        CorpusFormat::Savee,
        &["DC/d02.wav", "JE/f01.wav", "KL/h12.wav"],
        vec![
            ("d02.wav", "disgust", "DC"),
            ("f01.wav", "fear", "JE"),
            ("h12.wav", "happiness", "KL"),
        ],
    );
}

#[test]
fn tess() {
    check_named(
        CorpusFormat::Tess,
        &[
            "OAF_angry/OAF_back_angry.wav",
            "YAF_pleasant_surprised/YAF_wire_ps.wav",
            "YAF_happy/YAF_bean_happy.wav",
            "OAF_Sad/OAF_youth_sad.wav",
        ],
        // Sorted by path: "OAF_Sad/" sorts before "OAF_angry/" (byte order).
        vec![
            ("OAF_youth_sad.wav", "sadness", "OAF"),
            ("OAF_back_angry.wav", "anger", "OAF"),
            ("YAF_bean_happy.wav", "happiness", "YAF"),
            ("YAF_wire_ps.wav", "surprise", "YAF"),
        ],
    );
}

#[test]
fn baved() {
    check_named(
        CorpusFormat::Baved,
        &[
            "0/12-m-25-0-0-1.wav",
            "3/7-f-30-3-1-2.wav",
            "6/12-m-25-6-2-14.wav",
        ],
        vec![
            ("12-m-25-0-0-1.wav", "low", "12"),
            ("7-f-30-3-1-2.wav", "neutral", "7"),
            ("12-m-25-6-2-14.wav", "high", "12"),
        ],
    );
}

#[test]
fn eyase_speaker_is_the_folder() {
    check_named(
        CorpusFormat::Eyase,
        &[
            "Female01/fm01_ang (1).wav",
            "Female02/fm01_ang (1).wav",
            "Male03/ml03_sad (12).wav",
            "Male03/ml03_hap (2).wav",
            "Female01/fm01_neu (3).wav",
        ],
        vec![
            ("fm01_ang (1).wav", "anger", "Female01"),
            ("fm01_neu (3).wav", "neutral", "Female01"),
            ("fm01_ang (1).wav", "anger", "Female02"),
            ("ml03_hap (2).wav", "happiness", "Male03"),
            ("ml03_sad (12).wav", "sadness", "Male03"),
        ],
    );
}

#[test]
fn named_format_reports_files_that_do_not_follow_it() {
    let d = tempfile::tempdir().unwrap();
    for i in 1..=9 {
        wav(d.path(), &format!("wav/03a0{i}Fa.wav"), 160);
    }
    wav(d.path(), "wav/extra take.wav", 160);
    // 9 of 10 follow EmoDB: auto still picks it and reports the tenth.
    let c = load(d.path(), CorpusFormat::Auto, None).unwrap();
    assert_eq!(c.format, CorpusFormat::Emodb);
    assert_eq!(c.clips.len(), 9);
    assert_eq!(c.unreadable.len(), 1);
    assert!(
        c.unreadable[0].1.contains("emodb naming"),
        "{:?}",
        c.unreadable
    );
}

#[test]
fn errors_name_the_path_and_what_was_looked_for() {
    let d = tempfile::tempdir().unwrap();
    let missing = d.path().join("nope");
    let e = format!(
        "{:#}",
        load(&missing, CorpusFormat::Auto, None).unwrap_err()
    );
    assert!(e.contains("nope") && e.contains("no such"), "{e}");
    let e = format!(
        "{:#}",
        load(d.path(), CorpusFormat::Auto, None).unwrap_err()
    );
    assert!(
        e.contains("no audio files found") && e.contains(".flac"),
        "{e}"
    );
    wav(d.path(), "random name.wav", 160);
    wav(d.path(), "other.wav", 160);
    let e = format!(
        "{:#}",
        load(d.path(), CorpusFormat::Auto, None).unwrap_err()
    );
    assert!(e.contains("cannot tell the corpus layout"), "{e}");
    let f = d.path().join("other.wav");
    let e = format!("{:#}", load(&f, CorpusFormat::Auto, None).unwrap_err());
    assert!(e.contains("is a file"), "{e}");
    let e = format!("{:#}", load(d.path(), CorpusFormat::Csv, None).unwrap_err());
    assert!(e.contains("manifest"), "{e}");
}

#[test]
fn real_eyase_if_present() {
    let root: PathBuf = Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/data/eyase");
    if !root.exists() {
        eprintln!("skipping: {} not found", root.display());
        return;
    }
    let c = load(&root, CorpusFormat::Auto, None).unwrap();
    assert_eq!(c.format, CorpusFormat::Eyase);
    assert_eq!(c.clips.len(), 579);
    assert!(c.unreadable.is_empty(), "{:?}", c.unreadable);
    assert_eq!(
        c.speakers(),
        vec!["Female01", "Female02", "Female03", "Male01", "Male02", "Male03"]
    );
    assert_eq!(c.labels, vec!["anger", "happiness", "neutral", "sadness"]);
    // Per the data README: Female01..03 20 per emotion each; Male01 30/30/30/27,
    // Male02 30/20/30/30, Male03 30/22/30/30 (ang/hap/neu/sad).
    let per = |spk: &str| -> Vec<usize> {
        c.labels
            .iter()
            .map(|l| {
                c.clips
                    .iter()
                    .filter(|k| k.label == *l && k.speaker.as_deref() == Some(spk))
                    .count()
            })
            .collect()
    };
    for f in ["Female01", "Female02", "Female03"] {
        assert_eq!(per(f), vec![20, 20, 20, 20], "{f}");
    }
    assert_eq!(per("Male01"), vec![30, 30, 30, 27]);
    assert_eq!(per("Male02"), vec![30, 20, 30, 30]);
    assert_eq!(per("Male03"), vec![30, 22, 30, 30]);
    assert_eq!(c.class_counts(), vec![150, 132, 150, 147]);
    assert!(c.clips.iter().all(|k| k.sample_rate == 44_100));
    let total = c.total_duration_s();
    // README: "about 22.5 minutes in all", each clip 0.8-5.8 s.
    assert!((total / 60.0 - 22.5).abs() < 0.5, "{total} s");
    assert!(c.clips.iter().all(|k| (0.7..6.0).contains(&k.duration_s)));
    // Sorted by path.
    assert!(c.clips.windows(2).all(|w| w[0].path < w[1].path));
}
