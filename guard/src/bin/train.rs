//! Trains Guard's two domain models and evaluates them on a held-out split.
//!
//! ```text
//! guard/model/fetch-data.sh guard/model/data
//! cargo run --release -p nx1-guard --bin nx1-guard-train -- guard/model/data guard/model
//! ```
//!
//! Reads `benign.txt`, `phishing.txt`, `brands.txt` and `dga.txt` (`domain<TAB>family`) from
//! the data directory; writes `dga.nx1m` and `phishing.nx1m` to the output directory and the
//! evaluation, as Markdown, to standard output. Every name is assigned to training (70%),
//! validation (10%, used only to pick the threshold) or test (20%) by a hash of its
//! registrable domain, so the same data always gives the same model.

use nx1_guard::model::train::{self, Options};
use nx1_guard::model::{Kind, Model};
use std::collections::{BTreeMap, HashSet};
use std::path::{Path, PathBuf};
use std::time::Instant;

/// False-positive rate the threshold is chosen for, on the validation benign names.
const TARGET_FPR: f64 = 0.001;

fn lines(path: &Path) -> anyhow_lite::Result<Vec<String>> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("{}: {e} (run guard/model/fetch-data.sh)", path.display()))?;
    Ok(text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(str::to_ascii_lowercase)
        .collect())
}

/// Errors as strings: this is a small command-line tool.
mod anyhow_lite {
    pub type Result<T> = std::result::Result<T, String>;
}

#[derive(Clone, Copy, PartialEq)]
enum Split {
    Train,
    Validate,
    Test,
}

fn split(name: &str) -> Option<Split> {
    Some(match train::split_bucket(name)? {
        0..70 => Split::Train,
        70..80 => Split::Validate,
        _ => Split::Test,
    })
}

/// Test results of one group of positives (a DGA family).
#[derive(Default)]
struct Group {
    names: usize,
    flagged: usize,
    auc: f64,
}

struct Evaluation {
    auc: f64,
    own_auc: f64,
    own_positives: usize,
    precision: f64,
    recall: f64,
    fpr: f64,
    positives: usize,
    negatives: usize,
    flagged_benign: usize,
    threshold: f32,
    train_size: usize,
    ns_per_name: f64,
}

/// Trains one model on `(name, positive, group)` triples; returns it with its test results and
/// the test recall per group.
fn run(
    kind: Kind,
    examples: &[(String, bool, String)],
    brands: &[String],
) -> (Model, Evaluation, BTreeMap<String, Group>) {
    let options = Options {
        kind,
        bits: 16,
        epochs: 15,
        rate: 0.3,
        l2: 1e-7,
        seed: 0x6e78_3167,
    };
    let training: Vec<(String, bool)> = examples
        .iter()
        .filter(|(n, _, _)| split(n) == Some(Split::Train))
        .map(|(n, y, _)| (n.clone(), *y))
        .collect();
    let mut model = train::fit(
        train::untrained(kind, options.bits, brands),
        &training,
        &options,
    );
    let validation: Vec<f32> = examples
        .iter()
        .filter(|(n, y, _)| !y && split(n) == Some(Split::Validate))
        .filter_map(|(n, _, _)| Some(model.score(n)?.score))
        .collect();
    model.set_threshold(train::threshold_for(&validation, TARGET_FPR));
    let test: Vec<&(String, bool, String)> = examples
        .iter()
        .filter(|(n, _, _)| split(n) == Some(Split::Test))
        .collect();
    let started = Instant::now();
    // A name the model does not judge (under a brand's own domain) counts as unflagged.
    let scored: Vec<(f32, bool, &str)> = test
        .iter()
        .map(|(n, y, g)| (model.score(n).map_or(0.0, |s| s.score), *y, g.as_str()))
        .collect();
    let ns_per_name = started.elapsed().as_nanos() as f64 / scored.len().max(1) as f64;
    let t = model.threshold();
    let tp = scored.iter().filter(|(s, y, _)| *y && *s >= t).count();
    let fp = scored.iter().filter(|(s, y, _)| !*y && *s >= t).count();
    let positives = scored.iter().filter(|(_, y, _)| *y).count();
    let negatives = scored.len() - positives;
    let mut groups: BTreeMap<String, Group> = BTreeMap::new();
    for (s, y, g) in &scored {
        if *y {
            let e = groups.entry(g.to_string()).or_default();
            e.flagged += usize::from(*s >= t);
            e.names += 1;
        }
    }
    let benign: Vec<(f32, bool)> = scored
        .iter()
        .filter(|(_, y, _)| !y)
        .map(|(s, _, _)| (*s, false))
        .collect();
    for (name, group) in groups.iter_mut() {
        let mut pairs = benign.clone();
        pairs.extend(
            scored
                .iter()
                .filter(|(_, y, g)| *y && g == name)
                .map(|(s, _, _)| (*s, true)),
        );
        group.auc = train::roc_auc(&pairs);
    }
    let pairs: Vec<(f32, bool)> = scored.iter().map(|(s, y, _)| (*s, *y)).collect();
    // Positives whose registrable domain (by the Public Suffix List) they share with other
    // positives — generated names under a dynamic-DNS zone the list does not know — look the
    // same to a model that reads the registrable label. Reported apart.
    let mut registrables: std::collections::HashMap<String, usize> = Default::default();
    for (n, y, _) in &test {
        if *y {
            *registrables.entry(registrable(n)).or_default() += 1;
        }
    }
    let own: Vec<(f32, bool)> = scored
        .iter()
        .zip(&test)
        .filter(|(_, (n, y, _))| !*y || registrables[&registrable(n)] == 1)
        .map(|((s, y, _), _)| (*s, *y))
        .collect();
    let evaluation = Evaluation {
        auc: train::roc_auc(&pairs),
        own_auc: train::roc_auc(&own),
        own_positives: own.iter().filter(|(_, y)| *y).count(),
        precision: tp as f64 / (tp + fp).max(1) as f64,
        recall: tp as f64 / positives.max(1) as f64,
        fpr: fp as f64 / negatives.max(1) as f64,
        positives,
        negatives,
        flagged_benign: fp,
        threshold: t,
        train_size: training.len(),
        ns_per_name,
    };
    (model, evaluation, groups)
}

/// The registrable domain of a name (the name itself if the list cannot split it).
fn registrable(name: &str) -> String {
    psl::domain_str(name).unwrap_or(name).to_string()
}

fn report(kind: Kind, e: &Evaluation) {
    println!(
        "| {} | {} | {} / {} | {:.4} | {:.4} | {:.4} | {:.3}% ({}) | {:.4} | {:.1} µs |",
        kind.name(),
        e.train_size,
        e.positives,
        e.negatives,
        e.auc,
        e.precision,
        e.recall,
        e.fpr * 100.0,
        e.flagged_benign,
        e.threshold,
        e.ns_per_name / 1000.0
    );
}

fn main() -> std::process::ExitCode {
    let args: Vec<PathBuf> = std::env::args_os().skip(1).map(PathBuf::from).collect();
    if args.first().is_some_and(|a| a.as_os_str() == "--score") && args.len() >= 2 {
        return score(&args[1], &args[2..]);
    }
    let [data, out] = args.as_slice() else {
        eprintln!(
            "usage: nx1-guard-train DATA_DIR OUT_DIR\n       nx1-guard-train --score MODEL NAME..."
        );
        return std::process::ExitCode::from(2);
    };
    match train_both(data, out) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("nx1-guard-train: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn train_both(data: &Path, out: &Path) -> anyhow_lite::Result<()> {
    let benign = lines(&data.join("benign.txt"))?;
    let phishing = lines(&data.join("phishing.txt"))?;
    let brands = lines(&data.join("brands.txt"))?;
    let dga: Vec<(String, String)> = lines(&data.join("dga.txt"))?
        .into_iter()
        .filter_map(|l| {
            let (d, f) = l.split_once('\t')?;
            Some((d.to_string(), f.to_string()))
        })
        .collect();
    let dga_names: HashSet<&str> = dga.iter().map(|(d, _)| d.as_str()).collect();
    let phishing_names: HashSet<&str> = phishing.iter().map(String::as_str).collect();

    let mut dga_examples: Vec<(String, bool, String)> = dga
        .iter()
        .map(|(d, f)| (d.clone(), true, f.clone()))
        .collect();
    dga_examples.extend(
        benign
            .iter()
            .filter(|b| !dga_names.contains(b.as_str()))
            .map(|b| (b.clone(), false, String::new())),
    );
    let mut phishing_examples: Vec<(String, bool, String)> = phishing
        .iter()
        .map(|d| (d.clone(), true, "eth-phishing-detect".to_string()))
        .collect();
    phishing_examples.extend(
        benign
            .iter()
            .filter(|b| !phishing_names.contains(b.as_str()))
            .map(|b| (b.clone(), false, String::new())),
    );

    println!(
        "| model | training names | test positives / benign | ROC AUC | precision | recall | false positives | threshold | scoring time |"
    );
    println!("|---|---:|---:|---:|---:|---:|---:|---:|---:|");
    let mut per_family = BTreeMap::new();
    let mut evaluations = Vec::new();
    for (kind, examples) in [
        (Kind::Dga, &dga_examples),
        (Kind::Phishing, &phishing_examples),
    ] {
        let (model, evaluation, groups) = run(kind, examples, &brands);
        report(kind, &evaluation);
        let path = out.join(format!("{}.nx1m", kind.name()));
        std::fs::write(&path, model.to_bytes()).map_err(|e| format!("{}: {e}", path.display()))?;
        if kind == Kind::Dga {
            per_family = groups;
        }
        evaluations.push((kind, evaluation));
    }
    println!();
    println!(
        "| model | ROC AUC on positives with a registrable domain of their own | such positives |"
    );
    println!("|---|---:|---:|");
    for (kind, e) in &evaluations {
        println!(
            "| {} | {:.4} | {} |",
            kind.name(),
            e.own_auc,
            e.own_positives
        );
    }
    println!();
    println!("| DGA family | test names | ROC AUC against the benign test names | recall |");
    println!("|---|---:|---:|---:|");
    for (family, g) in per_family {
        println!(
            "| {family} | {} | {:.4} | {:.4} |",
            g.names,
            g.auc,
            g.flagged as f64 / g.names.max(1) as f64
        );
    }
    Ok(())
}

/// Prints a model's score for each name.
fn score(model: &Path, names: &[PathBuf]) -> std::process::ExitCode {
    let model = match std::fs::read(model)
        .map_err(|e| e.to_string())
        .and_then(|b| Model::from_bytes(&b).map_err(|e| e.to_string()))
    {
        Ok(m) => m,
        Err(e) => {
            eprintln!("nx1-guard-train: {}: {e}", model.display());
            return std::process::ExitCode::FAILURE;
        }
    };
    for name in names {
        let name = name.to_string_lossy();
        match model.score(&name) {
            Some(s) => println!(
                "{name}\t{:.4}\t{}",
                s.score,
                if s.flagged { "flagged" } else { "-" }
            ),
            None => println!("{name}\t-\tnot scored"),
        }
    }
    std::process::ExitCode::SUCCESS
}
