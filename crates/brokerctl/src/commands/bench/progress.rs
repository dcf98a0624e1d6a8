//! Progress of a bench run on stderr: bars on a terminal, a plain line every second otherwise.

use std::io::IsTerminal as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// The counters the publishers and the consumer advance.
#[derive(Debug, Default)]
pub struct Counters {
    /// Messages the broker confirmed.
    pub published: AtomicU64,
    /// Messages the handler saw (redeliveries included).
    pub consumed: AtomicU64,
}

/// Shows the counters until stopped or dropped (a run interrupted by Ctrl-C stops drawing
/// while it cleans up).
pub struct Progress {
    stop: CancellationToken,
    task: JoinHandle<()>,
}

impl Progress {
    /// Starts showing `counters` against `total`.
    pub fn start(counters: Arc<Counters>, total: u64) -> Progress {
        let stop = CancellationToken::new();
        let task = if std::io::stderr().is_terminal() {
            tokio::spawn(bars(counters, total, stop.clone()))
        } else {
            tokio::spawn(lines(counters, total, stop.clone()))
        };
        Progress { stop, task }
    }

    /// Stops showing progress (and clears the bars).
    pub async fn finish(mut self) {
        self.stop.cancel();
        let _ = (&mut self.task).await;
    }
}

impl Drop for Progress {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

async fn bars(counters: Arc<Counters>, total: u64, stop: CancellationToken) {
    let multi = MultiProgress::with_draw_target(ProgressDrawTarget::stderr());
    let style = ProgressStyle::with_template(
        "{prefix:>10} [{bar:40}] {human_pos}/{human_len} ({percent}%) {elapsed}",
    )
    .unwrap_or_else(|_| ProgressStyle::default_bar())
    .progress_chars("=> ");
    let bar = |name: &'static str| {
        let bar = multi.add(ProgressBar::new(total));
        bar.set_style(style.clone());
        bar.set_prefix(name);
        bar
    };
    let published = bar("published");
    let consumed = bar("consumed");
    loop {
        published.set_position(counters.published.load(Ordering::Relaxed).min(total));
        consumed.set_position(counters.consumed.load(Ordering::Relaxed).min(total));
        tokio::select! {
            () = stop.cancelled() => break,
            () = tokio::time::sleep(Duration::from_millis(100)) => {}
        }
    }
    published.finish_and_clear();
    consumed.finish_and_clear();
    let _ = multi.clear();
}

async fn lines(counters: Arc<Counters>, total: u64, stop: CancellationToken) {
    let mut ticks = tokio::time::interval(Duration::from_secs(1));
    ticks.tick().await;
    loop {
        tokio::select! {
            () = stop.cancelled() => break,
            _ = ticks.tick() => eprintln!(
                "bench: published {}/{total}, consumed {}/{total}",
                counters.published.load(Ordering::Relaxed),
                counters.consumed.load(Ordering::Relaxed),
            ),
        }
    }
}
