//! `download`: gets every artifact of the given job files onto local disk with the real
//! Downloader and Store, and says which jobs are OK.
//!
//! ```text
//! cargo run --release --example download -- [--store DIR] [--concurrency N] [--json] [--quiet] JOB.json...
//! ```
//!
//! Job ids are 1..n in argument order. Every job file is read and parsed before anything
//! is downloaded. Progress goes to stderr (bars on a terminal, plain lines otherwise,
//! nothing with `--quiet`); the result goes to stdout: one JSON object per job as it is
//! answered with `--json`, a summary table otherwise.
//!
//! Exit status: 0 when every job is OK, 1 when any failed (when the store cannot be
//! opened, e.g. because another run has it open, every job fails: with `--json`, one FAIL
//! object per job says why), 2 for bad usage or a job file that cannot be read or parsed,
//! 130 after Ctrl-C (every job in flight is cancelled; the store removes its temporary
//! files).

#[path = "common/mod.rs"]
mod common;

use std::io::{self, Write};
use std::path::PathBuf;
use std::process::ExitCode;

use artifact_coordinator::{Config, JobId, Store};
use clap::Parser;
use common::{Answer, JobSpec, Mode, Outcome, Progress};

/// Downloads every artifact of the given job configs into an artifact store.
#[derive(Debug, Parser)]
#[command(version, after_help = EXIT_CODES)]
struct Args {
    /// Directory of the artifact store (created if missing; its SQLite index lives in it).
    #[arg(long, value_name = "DIR", default_value = "./artifact-store")]
    store: PathBuf,

    /// Transfers that run at once (the store's worker pool).
    #[arg(
        long,
        value_name = "N",
        default_value_t = 16,
        value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..=1024),
    )]
    concurrency: usize,

    /// Print one JSON object per job on stdout as it is answered:
    /// {"job", "file", "ok", "msg", "config"} (the config with local paths filled).
    #[arg(long)]
    json: bool,

    /// Show no progress on stderr.
    #[arg(long, short)]
    quiet: bool,

    /// Job config files (JSON); the jobs get ids 1..n in this order.
    #[arg(value_name = "JOB.json", required = true)]
    jobs: Vec<PathBuf>,
}

/// Shown after `--help`.
const EXIT_CODES: &str = "Exit status: 0 every job OK, 1 a job failed (every job, when the \
    store cannot be opened, e.g. another run has it open), 2 bad usage or a job file that \
    cannot be read or parsed, 130 interrupted (Ctrl-C).";

#[tokio::main]
async fn main() -> ExitCode {
    // Bad usage exits with 2 (and `--help` with 0) inside `parse`.
    let args = Args::parse();
    let mut interrupt = common::Interrupt::new();
    let specs = match load(&args.jobs) {
        Ok(specs) => specs,
        Err(errors) => {
            for error in errors {
                eprintln!("download: {error}");
            }
            return ExitCode::from(2);
        }
    };

    let mut progress = Progress::new(Mode::detect(args.quiet));
    progress.init_tracing();
    let store = match Store::builder()
        .workers(args.concurrency)
        .open(&args.store)
        .await
    {
        Ok(store) => store,
        Err(err) => {
            let msg = format!("cannot open the store at {}: {err}", args.store.display());
            eprintln!("download: {msg}");
            // No job can run: each one failed, and `--json` still says so once per job.
            if args.json {
                for spec in &specs {
                    print_json(&Answer::failed(spec, msg.clone()));
                }
            }
            return ExitCode::from(1);
        }
    };

    let json = args.json;
    let outcome = common::run(&store, specs, &mut progress, &mut interrupt, |answer| {
        if json {
            print_json(answer);
        }
    })
    .await;
    match outcome {
        Outcome::Finished(answers) => {
            let failed = answers.iter().filter(|a| !a.ok).count();
            if !json {
                let mut out = io::stdout().lock();
                let _ = common::print_summary(&mut out, &answers);
                let _ = writeln!(
                    out,
                    "{} job{}: {} OK, {failed} failed",
                    answers.len(),
                    if answers.len() == 1 { "" } else { "s" },
                    answers.len() - failed,
                );
            }
            if failed == 0 {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(1)
            }
        }
        Outcome::Interrupted { cancelled } => {
            eprintln!(
                "download: interrupted; cancelled {cancelled} job{}",
                if cancelled == 1 { "" } else { "s" }
            );
            ExitCode::from(130)
        }
    }
}

/// Reads and parses every job file; the errors name the file and the reason (with line
/// and column, or the offending field).
fn load(files: &[PathBuf]) -> Result<Vec<JobSpec>, Vec<String>> {
    let mut specs = Vec::with_capacity(files.len());
    let mut errors = Vec::new();
    for (i, file) in files.iter().enumerate() {
        let parsed = std::fs::read_to_string(file)
            .map_err(|err| format!("cannot read {}: {err}", file.display()))
            .and_then(|text| {
                Config::from_json(&text).map_err(|err| format!("{}: {err}", file.display()))
            });
        match parsed {
            Ok(config) => specs.push(JobSpec {
                id: JobId(i as u64 + 1),
                label: file.display().to_string(),
                config,
            }),
            Err(error) => errors.push(error),
        }
    }
    if errors.is_empty() {
        Ok(specs)
    } else {
        Err(errors)
    }
}

/// One line of `--json` output, fields in this order.
#[derive(serde::Serialize)]
struct JsonLine<'a> {
    /// Job id (1..n in argument order).
    job: u64,
    /// The job file as given.
    file: &'a str,
    /// OK or FAIL.
    ok: bool,
    /// Why it failed; empty for OK.
    msg: &'a str,
    /// The config saved by the Downloader (local paths filled); `null` if it never was.
    config: Option<&'a Config>,
}

/// Prints the answer as one line of JSON on stdout.
fn print_json(answer: &Answer) {
    let line = JsonLine {
        job: answer.job.0,
        file: &answer.label,
        ok: answer.ok,
        msg: &answer.msg,
        config: answer.config.as_ref(),
    };
    if let Ok(line) = serde_json::to_string(&line) {
        // A closed stdout (e.g. `| head`) is not worth a panic.
        let _ = writeln!(io::stdout().lock(), "{line}");
    }
}
