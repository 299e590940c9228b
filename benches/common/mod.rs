//! Helpers shared by the bench binaries (included with `#[path]`).

/// Peak resident set size of this process so far (Linux `VmHWM`), in MiB; -1 if unknown.
pub fn peak_rss_mib() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse::<f64>().ok())
        })
        .map_or(-1.0, |kib| kib / 1024.0)
}

/// Median of the values (sorts them in place).
pub fn median(v: &mut [f64]) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

/// Switches `perf record --control=fifo:CTL[,ACK]` on and off around the timed part of a
/// bench, so a profile holds only what is measured. Set `PERF_CTL_FIFO` (and optionally
/// `PERF_ACK_FIFO`) to perf's fifos and start perf with `-D -1` (events disabled); without
/// the variable this does nothing.
#[allow(dead_code)]
#[derive(Default)]
pub struct PerfControl {
    ctl: Option<std::fs::File>,
    ack: Option<std::fs::File>,
}

#[allow(dead_code)]
impl PerfControl {
    /// Opens the fifos named by the environment, if any.
    pub fn from_env() -> Self {
        let open = |var: &str, write: bool| {
            std::env::var_os(var).and_then(|path| {
                std::fs::OpenOptions::new()
                    .read(!write)
                    .write(write)
                    .open(path)
                    .ok()
            })
        };
        PerfControl {
            ctl: open("PERF_CTL_FIFO", true),
            ack: open("PERF_ACK_FIFO", false),
        }
    }

    /// Starts counting (waits for perf's acknowledgement when there is an ack fifo).
    pub fn enable(&mut self) {
        self.command(b"enable\n");
    }

    /// Stops counting.
    pub fn disable(&mut self) {
        self.command(b"disable\n");
    }

    fn command(&mut self, cmd: &[u8]) {
        use std::io::{Read, Write};
        if let Some(ctl) = self.ctl.as_mut() {
            let _ = ctl.write_all(cmd);
            let _ = ctl.flush();
            if let Some(ack) = self.ack.as_mut() {
                let mut buf = [0u8; 5];
                let _ = ack.read_exact(&mut buf);
            }
        }
    }
}
