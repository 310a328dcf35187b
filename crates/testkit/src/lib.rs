//! Test support shared by Warren's crates. A dev-dependency only: nothing here is linked
//! into a production build.
//!
//! - [`fake`]: a [`warren_runtime::Runtime`] whose sandboxes are host directories served by
//!   the real agent in this process, for tests of the engine, the server, the SDK and the CLI.
//! - [`host`]: what a test on the real kernel left behind (mounts, cgroups, processes).
//! - [`internet`]: a stand-in internet in a network namespace of the test's own (HTTP and
//!   DNS servers on documentation addresses), for network tests.
//! - [`registry`]: a local OCI registry (`docker-registry`) and small real images pushed to
//!   it, for tests of the image puller.

pub mod fake;
pub mod host;
pub mod internet;
pub mod registry;

pub use fake::FakeRuntime;
