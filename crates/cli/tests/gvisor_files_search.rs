//! tests/files_search.rs once more, every sandbox on gVisor (tests/common/mod.rs starts the
//! daemons with `--runtime gvisor` for test crates named `gvisor_*`).
#[path = "files_search.rs"]
mod suite;
