//! Every `ser-engine ...` command line shown in a code block of README.md or docs/*.md must
//! parse with the real command line (`ser_engine::cli::Cli`), so the documentation cannot
//! drift from the CLI. Parsing only: no file is read and nothing runs.

use clap::Parser;
use ser_engine::cli::Cli;
use std::path::{Path, PathBuf};

/// A command line found in a document, with where it starts.
struct DocCommand {
    file: String,
    line: usize,
    text: String,
    /// The words after `ser-engine` (or after `cargo run --release --`).
    args: Vec<String>,
}

fn doc_files(root: &Path) -> Vec<PathBuf> {
    let mut files = vec![root.join("README.md")];
    let mut docs: Vec<PathBuf> = std::fs::read_dir(root.join("docs"))
        .expect("docs/ exists")
        .map(|e| e.expect("readable docs/ entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "md"))
        .collect();
    docs.sort();
    files.extend(docs);
    files
}

/// Splits a shell line into words (single and double quotes, backslash escapes); `|`, `;` and
/// `&&` outside quotes end a command and come back as their own words.
fn shell_words(line: &str) -> Vec<String> {
    let mut words = Vec::new();
    let mut cur = String::new();
    let mut in_word = false;
    let mut chars = line.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '\'' => {
                in_word = true;
                for q in chars.by_ref() {
                    if q == '\'' {
                        break;
                    }
                    cur.push(q);
                }
            }
            '"' => {
                in_word = true;
                while let Some(q) = chars.next() {
                    match q {
                        '"' => break,
                        '\\' => {
                            if let Some(n) = chars.next() {
                                cur.push(n);
                            }
                        }
                        _ => cur.push(q),
                    }
                }
            }
            '\\' => {
                in_word = true;
                if let Some(n) = chars.next() {
                    cur.push(n);
                }
            }
            '|' | ';' => {
                if in_word {
                    words.push(std::mem::take(&mut cur));
                    in_word = false;
                }
                words.push(c.to_string());
            }
            '&' if chars.peek() == Some(&'&') => {
                chars.next();
                if in_word {
                    words.push(std::mem::take(&mut cur));
                    in_word = false;
                }
                words.push("&&".into());
            }
            c if c.is_whitespace() => {
                if in_word {
                    words.push(std::mem::take(&mut cur));
                    in_word = false;
                }
            }
            _ => {
                in_word = true;
                cur.push(c);
            }
        }
    }
    if in_word {
        words.push(cur);
    }
    words
}

/// Removes a `# comment` (a `#` at the start or after whitespace, outside quotes).
fn strip_comment(line: &str) -> &str {
    let (mut single, mut double) = (false, false);
    let mut prev_space = true;
    for (i, c) in line.char_indices() {
        match c {
            '\'' if !double => single = !single,
            '"' if !single => double = !double,
            '#' if !single && !double && prev_space => return line[..i].trim_end(),
            _ => {}
        }
        prev_space = c.is_whitespace();
    }
    line
}

/// The two readings of a line with `[optional]` parts: all of them given, and none.
fn optional_variants(line: &str) -> Vec<String> {
    if !line.contains('[') {
        return vec![line.to_string()];
    }
    let mut all = String::new();
    let mut none = String::new();
    let mut depth = 0usize;
    for c in line.chars() {
        match c {
            '[' => depth += 1,
            ']' if depth > 0 => depth -= 1,
            _ => {
                all.push(c);
                if depth == 0 {
                    none.push(c);
                }
            }
        }
    }
    vec![all, none]
}

/// The argument lists of every ser-engine command on one (joined) shell line.
fn commands_on_line(line: &str) -> Vec<Vec<String>> {
    let words = shell_words(line);
    let mut out = Vec::new();
    for segment in words.split(|w| w == "|" || w == ";" || w == "&&") {
        if let Some(pos) = segment.iter().position(|w| w == "ser-engine") {
            // `ser-engine` as the program, not as an argument of another one (e.g. a path).
            if pos == 0 || segment[..pos].iter().all(|w| w.contains('=')) {
                out.push(segment[pos + 1..].to_vec());
            }
        } else if segment.len() >= 4
            && segment[0] == "cargo"
            && segment[1] == "run"
            && segment.contains(&"--".to_string())
        {
            let dd = segment.iter().position(|w| w == "--").unwrap();
            out.push(segment[dd + 1..].to_vec());
        }
    }
    out
}

fn doc_commands(root: &Path) -> Vec<DocCommand> {
    let mut found = Vec::new();
    for path in doc_files(root) {
        let file = path
            .strip_prefix(root)
            .unwrap_or(&path)
            .display()
            .to_string();
        let text = std::fs::read_to_string(&path)
            .unwrap_or_else(|e| panic!("{}: cannot read: {e}", path.display()));
        let mut fence: Option<String> = None;
        let mut pending: Option<(usize, String)> = None;
        for (i, raw) in text.lines().enumerate() {
            let lineno = i + 1;
            let trimmed = raw.trim_start();
            if let Some(info) = trimmed.strip_prefix("```") {
                fence = match fence {
                    None => Some(info.trim().to_string()),
                    Some(_) => None,
                };
                pending = None;
                continue;
            }
            let Some(lang) = &fence else { continue };
            if !matches!(
                lang.as_str(),
                "" | "sh" | "bash" | "shell" | "text" | "console"
            ) {
                continue;
            }
            let mut line = trimmed.strip_prefix("$ ").unwrap_or(trimmed).to_string();
            if let Some((start, mut acc)) = pending.take() {
                acc.push(' ');
                acc.push_str(line.trim());
                line = acc;
                let cont = line.ends_with('\\');
                if cont {
                    line.pop();
                    pending = Some((start, line));
                    continue;
                }
                push_line(&mut found, &file, start, &line);
                continue;
            }
            let line = strip_comment(&line).to_string();
            if let Some(body) = line.strip_suffix('\\') {
                pending = Some((lineno, body.to_string()));
                continue;
            }
            push_line(&mut found, &file, lineno, &line);
        }
    }
    found
}

fn push_line(found: &mut Vec<DocCommand>, file: &str, line: usize, text: &str) {
    let text = strip_comment(text);
    for variant in optional_variants(text) {
        for args in commands_on_line(&variant) {
            found.push(DocCommand {
                file: file.to_string(),
                line,
                text: variant.trim().to_string(),
                args,
            });
        }
    }
}

#[test]
fn every_command_line_in_the_docs_parses() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let commands = doc_commands(root);
    // The README and the guide show dozens of commands; finding few means the extraction broke.
    assert!(
        commands.len() >= 40,
        "found only {} ser-engine command lines in the docs",
        commands.len()
    );
    let mut failures = Vec::new();
    for c in &commands {
        let argv = std::iter::once("ser-engine".to_string()).chain(c.args.iter().cloned());
        if let Err(e) = Cli::try_parse_from(argv) {
            use clap::error::ErrorKind;
            if matches!(e.kind(), ErrorKind::DisplayHelp | ErrorKind::DisplayVersion) {
                continue;
            }
            let msg = e.render().to_string();
            let first = msg.lines().next().unwrap_or("").to_string();
            failures.push(format!("{}:{}: `{}`: {}", c.file, c.line, c.text, first));
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} command lines in the docs do not parse:\n{}",
        failures.len(),
        commands.len(),
        failures.join("\n")
    );
}

#[test]
fn extraction_joins_continuations_strips_comments_and_finds_piped_commands() {
    let words = commands_on_line(
        "arecord -f S16_LE -r 16000 | ser-engine predict --model \"runs/a b\" --window 2 -",
    );
    assert_eq!(
        words,
        vec![vec!["predict", "--model", "runs/a b", "--window", "2", "-"]]
    );
    assert_eq!(
        commands_on_line("cargo run --release -- train --seed 1"),
        vec![vec!["train", "--seed", "1"]]
    );
    assert_eq!(
        strip_comment("ser-engine info   # version"),
        "ser-engine info"
    );
    assert_eq!(
        strip_comment("ser-engine x \"a # b\""),
        "ser-engine x \"a # b\""
    );
    assert_eq!(
        optional_variants("ser-engine a [--b 1] c"),
        vec!["ser-engine a --b 1 c", "ser-engine a  c"]
    );
    // A made-up flag must be refused, or the main test could not fail.
    let bad = ["ser-engine", "train", "--no-such-flag"];
    assert!(Cli::try_parse_from(bad).is_err());
}
