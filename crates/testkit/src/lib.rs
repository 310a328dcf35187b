//! Test support shared by Warren's crates. A dev-dependency only: nothing here is linked
//! into a production build.

pub mod host;
