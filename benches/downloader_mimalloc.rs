//! `benches/downloader.rs` with mimalloc as the global allocator (labels `rust-actor-mimalloc`
//! and `rust-actor-async-mimalloc`; no scaling run or criterion).
//!
//! The allocator is the embedding program's choice, and it matters here: every status
//! change's path is allocated by the manager's thread and freed on the actor's (inside the
//! controller's update, which owns the info string made from it). With glibc's malloc such
//! a free goes to the other thread's arena, whose locks and consolidation the manager's
//! own allocations then contend with; mimalloc frees to the owning page's list without
//! either. Run next to the system-allocator figures by `benches/coordinator_vs_go.sh`.

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[path = "downloader.rs"]
mod downloader;

fn main() {
    downloader::run("-mimalloc", false);
}
