//! The native backend: Linux namespaces, cgroups (v1, hybrid, v2), overlayfs, seccomp.
//! (Being written.)

pub mod caps;
pub mod seccomp;
