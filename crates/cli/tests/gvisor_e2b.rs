//! tests/e2b.rs once more, every sandbox on gVisor (tests/common/mod.rs starts the
//! daemons with `--runtime gvisor` for test crates named `gvisor_*`).
#[path = "e2b.rs"]
mod suite;
