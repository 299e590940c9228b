//! Shared by the `download` and `demo` examples: a [`JobsController`] over job configs held
//! in memory, the progress display (indicatif bars on a terminal, plain lines otherwise,
//! nothing when quiet), and [`run`], which drives jobs through the real Downloader and
//! Store until each is answered or Ctrl-C cancels them.

use std::collections::{BTreeMap, HashMap};
use std::io::{self, IsTerminal, Write};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use artifact_coordinator::{
    ArtifactManager, ArtifactPath, ArtifactStatus, BoxError, Config, Downloader, INFO_FAILED,
    JobId, JobStatus, JobsController, Notification, StatusNow, Store, TestAction, async_trait,
};
use indicatif::{HumanBytes, MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};
use tokio::sync::mpsc;

/// One job to run: its id, how it is named on screen and in the JSON output (the job file
/// as given, or the demo's job name), and its parsed config.
#[derive(Debug, Clone)]
pub struct JobSpec {
    /// Job id given to the Downloader.
    pub id: JobId,
    /// Name shown in progress and summaries.
    pub label: String,
    /// The config `get_config` returns.
    pub config: Config,
}

/// What the controller tells the display, as the Downloader calls it.
#[derive(Debug)]
struct StatusEvent {
    /// The job.
    job: JobId,
    /// The info text (`""`, `"i / n artifacts ready"` or [`INFO_FAILED`]).
    info: String,
}

/// A [`JobsController`] over configs parsed up front. Status calls become events for the
/// display (an unbounded channel: the Downloader never waits for the terminal); saved
/// configs are kept for the JSON output and the summary.
struct Jobs {
    /// The configs the jobs start with; never changes.
    configs: HashMap<JobId, Config>,
    /// Configs saved by the Downloader (local paths filled). A std mutex: held only to
    /// insert or clone, never across an await.
    saved: Mutex<HashMap<JobId, Config>>,
    /// Status calls, forwarded to [`run`]'s loop.
    events: mpsc::UnboundedSender<StatusEvent>,
}

impl Jobs {
    /// Hands a status update to [`run`]'s loop (an unbounded channel: never waits). The
    /// loop only stops listening once every job is answered: a late update is moot.
    fn forward(&self, job: JobId, info: String) {
        let _ = self.events.send(StatusEvent { job, info });
    }
}

#[async_trait]
impl JobsController for Jobs {
    async fn set_status_and_info(
        &self,
        job: JobId,
        _status: JobStatus,
        info: String,
    ) -> Result<(), BoxError> {
        self.forward(job, info);
        Ok(())
    }

    /// Forwarding never waits, so every update is made here, and the Downloader needs no
    /// future for it.
    fn try_set_status_and_info(&self, job: JobId, _status: JobStatus, info: String) -> StatusNow {
        self.forward(job, info);
        StatusNow::Done(Ok(()))
    }

    async fn get_config(&self, job: JobId) -> Result<Config, BoxError> {
        self.configs
            .get(&job)
            .cloned()
            .ok_or_else(|| format!("no job {job}").into())
    }

    async fn set_config(&self, job: JobId, config: Config) -> Result<(), BoxError> {
        self.saved
            .lock()
            .map_err(|_| "config map poisoned")?
            .insert(job, config);
        Ok(())
    }
}

impl Jobs {
    /// The config saved for `job`, if any.
    fn saved(&self, job: JobId) -> Option<Config> {
        self.saved.lock().ok()?.get(&job).cloned()
    }
}

/// Number of artifacts the Downloader pushes for `config` (images, their checksum files,
/// test-case pushes): the length of the job's progress bar.
pub fn push_count(config: &Config) -> usize {
    let filled = |uri: &Option<String>| uri.as_deref().is_some_and(|u| !u.is_empty());
    let images: usize = config
        .action
        .deploy
        .images
        .iter()
        .map(|image| usize::from(filled(&image.uri)) + usize::from(filled(&image.checksum_uri)))
        .sum();
    let pushes = config
        .action
        .test
        .test_cases
        .iter()
        .flat_map(|case| &case.test_actions)
        .filter(|action| matches!(action, TestAction::Push(_)))
        .count();
    images + pushes
}

/// Local paths of every pushed artifact of a saved config.
pub fn pushed_paths(config: &Config) -> Vec<ArtifactPath> {
    let images = config
        .action
        .deploy
        .images
        .iter()
        .flat_map(|image| [&image.path, &image.checksum_path]);
    let pushes = config
        .action
        .test
        .test_cases
        .iter()
        .flat_map(|case| &case.test_actions)
        .filter_map(|action| match action {
            TestAction::Push(push) => Some(&push.path),
            _ => None,
        });
    images
        .chain(pushes)
        .filter_map(|path| path.as_deref().map(ArtifactPath::from))
        .collect()
}

/// READY artifacts of a saved config and their total size, from the store's index.
pub async fn ready_bytes(store: &Store, config: &Config) -> (usize, u64) {
    let mut ready = 0;
    let mut bytes = 0;
    for path in pushed_paths(config) {
        if let Ok(Some(record)) = store.info(&path).await
            && record.status == ArtifactStatus::Ready
        {
            ready += 1;
            bytes += record.size.unwrap_or(0);
        }
    }
    (ready, bytes)
}

/// How progress is shown on stderr.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// One indicatif bar per job (stderr is a terminal).
    Bars,
    /// One plain line per change (stderr is a file or a pipe).
    Lines,
    /// Nothing.
    Quiet,
}

impl Mode {
    /// `Quiet` when asked, else bars on a terminal and plain lines otherwise.
    pub fn detect(quiet: bool) -> Mode {
        if quiet {
            Mode::Quiet
        } else if io::stderr().is_terminal() {
            Mode::Bars
        } else {
            Mode::Lines
        }
    }
}

/// The progress display of every job.
#[derive(Debug)]
pub struct Progress {
    /// How to show it.
    mode: Mode,
    /// The bars' container (draws nothing unless the mode is `Bars`); also routes log lines
    /// above the bars.
    multi: MultiProgress,
    /// Per-job state, by job id.
    jobs: BTreeMap<JobId, JobLine>,
}

/// One job's line on screen.
#[derive(Debug)]
struct JobLine {
    /// Its label.
    label: String,
    /// Its bar, in `Bars` mode.
    bar: Option<ProgressBar>,
    /// Last count of READY artifacts shown.
    ready: usize,
    /// Artifacts to push (grows if the Downloader reports more).
    total: usize,
}

impl Progress {
    /// A display in `mode`.
    pub fn new(mode: Mode) -> Progress {
        let target = if mode == Mode::Bars {
            ProgressDrawTarget::stderr()
        } else {
            ProgressDrawTarget::hidden()
        };
        Progress {
            mode,
            multi: MultiProgress::with_draw_target(target),
            jobs: BTreeMap::new(),
        }
    }

    /// Installs a `tracing` subscriber whose lines go to stderr above the bars. The filter
    /// comes from `RUST_LOG` (e.g. `RUST_LOG=artifact_coordinator=debug`); by default only
    /// errors are logged, since failures are shown with their reasons anyway.
    pub fn init_tracing(&self) {
        let filter = tracing_subscriber::EnvFilter::try_from_default_env()
            .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("error"));
        let writer = LogWriter(self.multi.clone());
        let _ = tracing_subscriber::fmt()
            .with_env_filter(filter)
            .with_ansi(io::stderr().is_terminal())
            .with_writer(move || writer.clone())
            .try_init();
    }

    /// Adds a job with `total` artifacts to download.
    pub fn add(&mut self, job: JobId, label: &str, total: usize) {
        let bar = (self.mode == Mode::Bars).then(|| {
            let style = ProgressStyle::with_template(
                "{prefix:<24!} [{bar:30.cyan/blue}] {pos:>3} / {len:<3} artifacts ready  {msg}",
            )
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> ");
            let bar = self.multi.add(ProgressBar::new(total as u64));
            bar.set_style(style);
            bar.set_prefix(format!("job {job} {label}"));
            bar
        });
        self.jobs.insert(
            job,
            JobLine {
                label: label.to_owned(),
                bar,
                ready: 0,
                total,
            },
        );
    }

    /// Shows an info text from the Downloader; `bytes` is what is READY so far, when known.
    fn info(&mut self, job: JobId, info: &str, bytes: Option<u64>, elapsed: Duration) {
        let mode = self.mode;
        let Some(line) = self.jobs.get_mut(&job) else {
            return;
        };
        let Some((ready, total)) = parse_ready(info) else {
            // "" (started) and INFO_FAILED (the reason comes with the answer) show nothing.
            return;
        };
        line.ready = line.ready.max(ready);
        line.total = line.total.max(total);
        let rate = bytes
            .map(|b| bytes_and_rate(b, elapsed))
            .unwrap_or_default();
        match (mode, &line.bar) {
            (Mode::Bars, Some(bar)) => {
                bar.set_length(line.total as u64);
                bar.set_position(line.ready as u64);
                bar.set_message(rate);
            }
            (Mode::Lines, _) => {
                let rate = if rate.is_empty() {
                    String::new()
                } else {
                    format!(" ({rate})")
                };
                eprintln!(
                    "job {job} {}: {} / {} artifacts ready{rate}",
                    line.label, line.ready, line.total
                );
            }
            _ => {}
        }
    }

    /// Shows a job's answer: its bar finishes, and a FAIL gets one line with its reason.
    fn finish(&mut self, answer: &Answer) {
        let Some(line) = self.jobs.get_mut(&answer.job) else {
            return;
        };
        let summary = format!(
            "{} / {} ready, {} in {:.1} s",
            answer.ready,
            answer.total,
            HumanBytes(answer.bytes),
            answer.elapsed.as_secs_f64()
        );
        match (self.mode, &line.bar) {
            (Mode::Bars, Some(bar)) => {
                bar.set_length(answer.total as u64);
                bar.set_position(answer.ready as u64);
                if answer.ok {
                    bar.finish_with_message(format!("OK ({summary})"));
                } else {
                    bar.abandon_with_message("FAIL");
                    let _ = self.multi.println(format!(
                        "job {} {}: FAIL: {}",
                        answer.job, line.label, answer.msg
                    ));
                }
            }
            (Mode::Lines, _) if answer.ok => {
                eprintln!("job {} {}: OK ({summary})", answer.job, line.label);
            }
            (Mode::Lines, _) => {
                eprintln!("job {} {}: FAIL: {}", answer.job, line.label, answer.msg);
            }
            _ => {}
        }
    }

    /// Prints a line on stderr above the bars (unless quiet).
    pub fn println(&self, text: &str) {
        match self.mode {
            Mode::Bars => {
                let _ = self.multi.println(text);
            }
            Mode::Lines => eprintln!("{text}"),
            Mode::Quiet => {}
        }
    }

    /// Removes every bar that is still drawn (after Ctrl-C).
    fn clear(&self) {
        for line in self.jobs.values() {
            if let Some(bar) = &line.bar
                && !bar.is_finished()
            {
                bar.abandon_with_message("cancelled");
            }
        }
    }
}

/// A `tracing` writer that prints above the bars (and straight to stderr when they are
/// hidden). The formatter writes one event per `write` call.
#[derive(Clone)]
struct LogWriter(MultiProgress);

impl Write for LogWriter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0.suspend(|| io::stderr().write_all(buf))?;
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        io::stderr().flush()
    }
}

/// `(ready, total)` from `"<ready> / <total> artifacts ready"`.
fn parse_ready(info: &str) -> Option<(usize, usize)> {
    let (ready, rest) = info.strip_suffix(" artifacts ready")?.split_once(" / ")?;
    Some((ready.parse().ok()?, rest.parse().ok()?))
}

/// `"12.00 MiB, 3.40 MiB/s"`.
fn bytes_and_rate(bytes: u64, elapsed: Duration) -> String {
    let secs = elapsed.as_secs_f64();
    if secs > 0.0 {
        format!(
            "{}, {}/s",
            HumanBytes(bytes),
            HumanBytes((bytes as f64 / secs) as u64)
        )
    } else {
        HumanBytes(bytes).to_string()
    }
}

/// A job's answer, with what it got.
#[derive(Debug, Clone)]
pub struct Answer {
    /// The job.
    pub job: JobId,
    /// Its label.
    pub label: String,
    /// OK or FAIL.
    pub ok: bool,
    /// Why it failed; empty for OK.
    pub msg: String,
    /// The config the Downloader saved (local paths filled), if it got that far.
    pub config: Option<Config>,
    /// Artifacts READY when the job was answered.
    pub ready: usize,
    /// Artifacts pushed for the job.
    pub total: usize,
    /// Their size in bytes.
    pub bytes: u64,
    /// Time from the start of the run to the answer.
    pub elapsed: Duration,
}

impl Answer {
    /// A FAIL for a job that never ran.
    pub fn failed(spec: &JobSpec, msg: String) -> Answer {
        Answer {
            job: spec.id,
            label: spec.label.clone(),
            ok: false,
            msg,
            config: None,
            ready: 0,
            total: 0,
            bytes: 0,
            elapsed: Duration::ZERO,
        }
    }
}

/// How [`run`] ended.
#[derive(Debug)]
pub enum Outcome {
    /// Every job was answered; the answers in job order.
    Finished(Vec<Answer>),
    /// Ctrl-C: the jobs still in flight were cancelled.
    Interrupted {
        /// How many were cancelled.
        cancelled: usize,
    },
}

/// Runs `jobs` at once through a Downloader over `store`, showing progress, and calls
/// `on_answer` as each job is answered.
///
/// A failed job is cancelled in the store at once (its other transfers stop and their
/// temporary files are removed). On Ctrl-C every job in flight is cancelled the same way,
/// `on_answer` gets a FAIL ("interrupted") for each, and the run ends with
/// [`Outcome::Interrupted`]. Either way the store is closed at the end.
pub async fn run(
    store: &Store,
    jobs: Vec<JobSpec>,
    progress: &mut Progress,
    interrupt: &mut Interrupt,
    mut on_answer: impl FnMut(&Answer),
) -> Outcome {
    let start = Instant::now();
    let (events_tx, mut events) = mpsc::unbounded_channel();
    let totals: HashMap<JobId, usize> = jobs
        .iter()
        .map(|spec| (spec.id, push_count(&spec.config)))
        .collect();
    let labels: HashMap<JobId, String> = jobs
        .iter()
        .map(|spec| (spec.id, spec.label.clone()))
        .collect();
    for spec in &jobs {
        progress.add(spec.id, &spec.label, totals[&spec.id]);
    }
    let controller = Arc::new(Jobs {
        configs: jobs.iter().map(|s| (s.id, s.config.clone())).collect(),
        saved: Mutex::new(HashMap::new()),
        events: events_tx,
    });
    let manager: Arc<dyn ArtifactManager> = Arc::new(store.clone());
    let (downloader, mut notifications) = Downloader::new(controller.clone(), manager);

    // Start every job; a job the Downloader refuses is answered FAIL like any other.
    let (refused_tx, mut refused) = mpsc::unbounded_channel();
    for spec in &jobs {
        let downloader = downloader.clone();
        let refused_tx = refused_tx.clone();
        let job = spec.id;
        tokio::spawn(async move {
            if let Err(err) = downloader.download(job).await {
                let _ = refused_tx.send(Notification {
                    job,
                    ok: false,
                    msg: err.to_string(),
                });
            }
        });
    }
    drop(refused_tx);

    let mut pending: Vec<JobId> = jobs.iter().map(|spec| spec.id).collect();
    let mut answers = Vec::with_capacity(jobs.len());
    while !pending.is_empty() {
        let note = tokio::select! {
            // Status events first: a job's last "n / n artifacts ready" is shown before its
            // answer.
            biased;
            Some(event) = events.recv() => {
                show(progress, store, &controller, event, start.elapsed()).await;
                continue;
            }
            note = notifications.recv() => note.unwrap_or_else(|| Notification {
                // The actor stopped (it only does when it panicked): answer what is left.
                job: pending[0],
                ok: false,
                msg: "the downloader has stopped".to_owned(),
            }),
            Some(note) = refused.recv() => note,
            () = interrupt.wait() => {
                progress.clear();
                let cancelled = pending.len();
                for job in pending.drain(..) {
                    if let Err(err) = downloader.cancel(job).await {
                        progress.println(&format!("job {job}: {err}"));
                    }
                    if let Some(spec) = jobs.iter().find(|spec| spec.id == job) {
                        on_answer(&Answer::failed(spec, "interrupted (cancelled)".to_owned()));
                    }
                }
                let _ = downloader.shutdown().await;
                store.close().await;
                return Outcome::Interrupted { cancelled };
            }
        };
        let Some(at) = pending.iter().position(|&job| job == note.job) else {
            continue;
        };
        // Status calls made before the answer are in the channel by now: show them first.
        while let Ok(event) = events.try_recv() {
            show(progress, store, &controller, event, start.elapsed()).await;
        }
        pending.swap_remove(at);
        if !note.ok {
            // Stop the job's other transfers: nothing will wait for them.
            let _ = downloader.cancel(note.job).await;
        }
        let config = controller.saved(note.job);
        let (ready, bytes) = match &config {
            Some(config) => ready_bytes(store, config).await,
            None => (0, 0),
        };
        let answer = Answer {
            job: note.job,
            label: labels.get(&note.job).cloned().unwrap_or_default(),
            ok: note.ok,
            msg: note.msg,
            config,
            ready,
            total: totals.get(&note.job).copied().unwrap_or(0),
            bytes,
            elapsed: start.elapsed(),
        };
        progress.finish(&answer);
        // Output on stdout may share the terminal with the bars: hide them meanwhile.
        progress.multi.suspend(|| on_answer(&answer));
        answers.push(answer);
    }
    if let Err(err) = downloader.shutdown().await {
        progress.println(&format!("downloader: {err}"));
    }
    // Nothing should be in flight any more; this makes sure of it.
    store.close().await;
    answers.sort_by_key(|answer| answer.job);
    Outcome::Finished(answers)
}

/// Shows one status call on `progress`, with the bytes READY so far once the job's config
/// (and so its paths) is saved.
async fn show(
    progress: &mut Progress,
    store: &Store,
    controller: &Jobs,
    event: StatusEvent,
    elapsed: Duration,
) {
    if progress.mode == Mode::Quiet {
        return;
    }
    let bytes = match controller.saved(event.job) {
        Some(config) if event.info != INFO_FAILED => Some(ready_bytes(store, &config).await.1),
        _ => None,
    };
    progress.info(event.job, &event.info, bytes, elapsed);
}

/// Ctrl-C, registered when created (so a signal that arrives while the first jobs start
/// is not lost).
/// Ctrl-C, caught from the moment it is made (made first thing, so that an interrupt
/// during setup is seen too instead of killing the process half-way).
pub struct Interrupt {
    #[cfg(unix)]
    signal: Option<tokio::signal::unix::Signal>,
}

impl Interrupt {
    /// Starts catching Ctrl-C.
    pub fn new() -> Interrupt {
        Interrupt {
            #[cfg(unix)]
            signal: tokio::signal::unix::signal(tokio::signal::unix::SignalKind::interrupt()).ok(),
        }
    }

    /// Resolves on Ctrl-C (never, if the handler could not be installed).
    pub async fn wait(&mut self) {
        #[cfg(unix)]
        match &mut self.signal {
            Some(signal) => {
                signal.recv().await;
            }
            None => std::future::pending().await,
        }
        #[cfg(not(unix))]
        if tokio::signal::ctrl_c().await.is_err() {
            std::future::pending::<()>().await;
        }
    }
}

/// Prints the summary table of `answers` on `out`.
pub fn print_summary(out: &mut impl Write, answers: &[Answer]) -> io::Result<()> {
    let width = answers
        .iter()
        .map(|a| a.label.chars().count())
        .max()
        .unwrap_or(0)
        .max("job".len());
    writeln!(
        out,
        "{:>4}  {:<width$}  {:>9}  {:>10}  {:>7}  result",
        "id", "job", "artifacts", "bytes", "time"
    )?;
    for a in answers {
        let result = if a.ok {
            "OK".to_owned()
        } else {
            format!("FAIL: {}", a.msg)
        };
        writeln!(
            out,
            "{:>4}  {:<width$}  {:>9}  {:>10}  {:>7}  {result}",
            a.job.0,
            a.label,
            format!("{} / {}", a.ready, a.total),
            HumanBytes(a.bytes).to_string(),
            format!("{:.1} s", a.elapsed.as_secs_f64()),
        )?;
    }
    Ok(())
}
