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

/// A free TCP port on 127.0.0.1.
#[allow(dead_code)]
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

/// The data set `<dir>/data/<name>/`: `count` files `f00000`, `f00001`, ... of `size`
/// deterministic pseudo-random bytes, made once and reused while every file is there with
/// its size; returns each file's name and sha256 (cached in `<dir>/data/<name>.sha256`).
/// Shared by `benches/store.rs` and `benches/vs_peers.rs`, so both use the same data.
#[allow(dead_code)]
pub fn data_set(
    dir: &std::path::Path,
    name: &str,
    count: usize,
    size: usize,
) -> Vec<(String, String)> {
    use sha2::Digest;
    use std::io::Write;
    let set_dir = dir.join("data").join(name);
    let manifest = dir.join("data").join(format!("{name}.sha256"));
    if let Some(files) = read_manifest(&manifest, count) {
        let complete = files
            .iter()
            .all(|(n, _)| std::fs::metadata(set_dir.join(n)).is_ok_and(|m| m.len() == size as u64));
        if complete {
            return files;
        }
    }
    eprintln!("# making {count} x {size} bytes in {}", set_dir.display());
    std::fs::create_dir_all(&set_dir).expect("data dir");
    let mut files = Vec::with_capacity(count);
    let mut rng = fastrand::Rng::with_seed(size as u64 ^ count as u64);
    let mut chunk = vec![0u8; 1 << 20];
    for i in 0..count {
        let name = format!("f{i:05}");
        let mut file =
            std::io::BufWriter::new(std::fs::File::create(set_dir.join(&name)).expect("create"));
        let mut hasher = sha2::Sha256::new();
        let mut left = size;
        while left > 0 {
            let n = left.min(chunk.len());
            rng.fill(&mut chunk[..n]);
            hasher.update(&chunk[..n]);
            file.write_all(&chunk[..n]).expect("write");
            left -= n;
        }
        file.flush().expect("flush");
        files.push((name, hex::encode(hasher.finalize())));
    }
    let text: String = files.iter().map(|(n, h)| format!("{h}  {n}\n")).collect();
    std::fs::write(&manifest, text).expect("manifest");
    files
}

/// `(name, sha256)` from a `sha256sum`-style manifest with `count` lines.
#[allow(dead_code)]
pub fn read_manifest(manifest: &std::path::Path, count: usize) -> Option<Vec<(String, String)>> {
    let text = std::fs::read_to_string(manifest).ok()?;
    let files: Vec<(String, String)> = text
        .lines()
        .filter_map(|l| l.split_once("  "))
        .map(|(h, n)| (n.to_owned(), h.to_owned()))
        .collect();
    (files.len() == count).then_some(files)
}
