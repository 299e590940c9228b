#!/usr/bin/env bash
# Side by side: the Go anchor (../shared/bench/weles_core, the hot path of Weles'
# DownloaderImpl) and our Downloader actor (cargo bench --bench downloader, criterion and
# the scaling run skipped), same shape (1,000 jobs x 100 artifacts), in the same session.
# Both are built first; then rounds alternate Go, Rust, Go, Rust, ... one run each, so
# that load from other processes hits both alike. Each Rust run is two runs: the twin of
# the Go anchor (a no-op controller whose updates are made at once, as Go's
# SetStatusAndInfo is a plain call; `rust-actor`) and the same with a controller that has
# only the async set_status_and_info (`rust-actor-async`); then both again with mimalloc
# as the global allocator (benches/downloader_mimalloc.rs). Prints every run's line, then
# one final line with the medians and the ratios to Go:
#   coordinator-vs-go runs=N go_changes_per_s=... rust_changes_per_s=... ratio_rust_go=...
#     rust_async_changes_per_s=... ratio_rust_async_go=... (then the same for mimalloc)
# Usage (from the repository root): bash benches/coordinator_vs_go.sh [runs]  (default 15)
set -eu
cd "$(dirname "$0")/.."
runs=${1:-15}
case "$runs" in ''|*[!0-9]*) echo "runs must be a number" >&2; exit 2;; esac
[ "$runs" -ge 1 ] && [ "$runs" -le 100 ] || { echo "runs: 1..100" >&2; exit 2; }

go_dir=../shared/bench/weles_core
if [ ! -f "$go_dir/run.sh" ] || [ ! -f "$go_dir/main.go" ]; then
  echo "coordinator-vs-go skipped: $go_dir/run.sh not found (the Go anchor is outside this repository)" >&2
  exit 0
fi
if ! command -v go >/dev/null; then
  echo "coordinator-vs-go skipped: go not found (apt-get install -y golang-go)" >&2
  exit 0
fi

tmp=$(mktemp -d); trap 'rm -rf "$tmp"' EXIT
# Build both before timing anything (run.sh would build Go on every call).
(cd "$go_dir" && GOPROXY=off go build -o "$tmp/weles_core" .)
bench_bin() {
  cargo bench --bench "$1" --no-run --message-format=json 2>/dev/null |
    sed -n 's/.*"executable":"\([^"]*\)".*/\1/p' | tail -n 1
}
rust_bin=$(bench_bin downloader)
[ -x "$rust_bin" ] || { echo "could not build benches/downloader.rs" >&2; exit 1; }
mi_bin=$(bench_bin downloader_mimalloc)
[ -x "$mi_bin" ] || { echo "could not build benches/downloader_mimalloc.rs" >&2; exit 1; }
echo "# $(go version), $(rustc --version), $(nproc) cores, $runs alternating runs each"

for _ in $(seq "$runs"); do
  "$tmp/weles_core" | tee -a "$tmp/go"
  BENCH_RUNS=1 BENCH_SKIP_SCALING=1 BENCH_SKIP_CRITERION=1 "$rust_bin" --bench >"$tmp/run"
  grep '^rust-actor changes_per_s=' "$tmp/run" | tee -a "$tmp/rust"
  grep '^rust-actor-async changes_per_s=' "$tmp/run" | tee -a "$tmp/rust_async"
  BENCH_RUNS=1 "$mi_bin" --bench >"$tmp/run"
  grep '^rust-actor-mimalloc changes_per_s=' "$tmp/run" | tee -a "$tmp/mi"
  grep '^rust-actor-async-mimalloc changes_per_s=' "$tmp/run" | tee -a "$tmp/mi_async"
done

# The changes_per_s values of a file's lines, sorted.
rates() { grep -o ' changes_per_s=[0-9.]*' "$1" | cut -d= -f2 | sort -n; }
med() { rates "$1" | awk '{ a[NR] = $1 } END { print (NR % 2) ? a[(NR + 1) / 2] : (a[NR / 2] + a[NR / 2 + 1]) / 2 }'; }
spread() { rates "$1" | awk 'NR == 1 { lo = $1 } { hi = $1 } END { printf "%.0f..%.0f", lo, hi }'; }
go_med=$(med "$tmp/go")
line="coordinator-vs-go runs=$runs go_changes_per_s=$(printf %.0f "$go_med")"
# name file: the median of a series and its ratio to Go.
for series in rust:rust rust_async:rust_async rust_mimalloc:mi rust_async_mimalloc:mi_async; do
  name=${series%%:*}; file=$tmp/${series#*:}
  line="$line $(awk -v n="$name" -v r="$(med "$file")" -v g="$go_med" 'BEGIN {
    printf "%s_changes_per_s=%.0f ratio_%s_go=%.2f", n, r, n, r / g }')"
done
echo "$line go_range=$(spread "$tmp/go") rust_range=$(spread "$tmp/rust") rust_mimalloc_range=$(spread "$tmp/mi")"
