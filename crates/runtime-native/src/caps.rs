//! Capability dropping for a sandbox's PID 1.
//!
//! A Warren sandbox runs its agent as uid 0 in fresh mount/pid/net/uts/ipc/cgroup namespaces
//! but *without* a user namespace, so its root is host root as far as capability checks go.
//! Capabilities (together with the seccomp filter in [`crate::seccomp`]) are what keep it
//! from acting as host root. We keep exactly Docker's default set (see
//! moby `oci/caps/defaults.go`) and drop everything else:
//!
//! * the **bounding set** loses every other capability, including ones newer than the
//!   `caps` crate knows about (we walk the numbers up to the kernel's last capability), so
//!   no later `execve` — not even of a setuid-root or file-capability binary — can regain
//!   them;
//! * the **ambient** and **inheritable** sets are cleared (as in current moby/runc: a
//!   non-empty inheritable set lets file capabilities re-grant privileges, CVE-2022-24769);
//! * **effective** and **permitted** become exactly the default set.
//!
//! Because uid 0 keeps its "root gets the bounding set on exec" semantics, processes the
//! agent executes as root get this set again; processes that `setuid` to an unprivileged
//! user lose all capabilities as usual (no `SECBIT_KEEP_CAPS` is set).
//!
//! Capability sets are **per thread**: [`apply_default`] only changes the calling thread (and
//! whatever it later forks/spawns). Call it while the process is still single-threaded —
//! i.e. before starting any async runtime or helper threads.

use std::collections::HashSet;
use std::io;

use caps::{CapSet, Capability, CapsHashSet};

/// Docker's default capability set, in the order Docker lists it, minus `CAP_MKNOD`.
///
/// Docker keeps `CAP_MKNOD` and relies on the devices cgroup to stop a container from using
/// the device nodes it makes. A cgroup v2 host has no devices controller without an eBPF
/// program, and a node made on the overlay's upper layer lands on the host's disk, so Warren
/// drops the capability instead: `mknod` of a device fails with EPERM everywhere (FIFOs and
/// sockets need no capability and keep working).
const DEFAULT_CAPS: &[Capability] = &[
    Capability::CAP_CHOWN,
    Capability::CAP_DAC_OVERRIDE,
    Capability::CAP_FSETID,
    Capability::CAP_FOWNER,
    Capability::CAP_NET_RAW,
    Capability::CAP_SETGID,
    Capability::CAP_SETUID,
    Capability::CAP_SETFCAP,
    Capability::CAP_SETPCAP,
    Capability::CAP_NET_BIND_SERVICE,
    Capability::CAP_SYS_CHROOT,
    Capability::CAP_KILL,
    Capability::CAP_AUDIT_WRITE,
];

/// Capability numbers are below 64 (the kernel ABI has two 32-bit words per set).
const MAX_CAP_NUMBER: u32 = 63;

/// Failure to drop capabilities. Any of these leaves the calling thread in an unknown
/// capability state; the caller must not go on to run untrusted code.
#[derive(Debug, thiserror::Error)]
pub enum CapsError {
    /// `prctl(PR_CAPBSET_READ)` failed for a reason other than "no such capability".
    #[error("reading capability {cap} from the bounding set: {source}")]
    BoundingRead {
        /// Capability name (or number, if the `caps` crate does not know it).
        cap: String,
        #[source]
        source: io::Error,
    },
    /// `prctl(PR_CAPBSET_DROP)` failed (typically: CAP_SETPCAP is not effective).
    #[error("dropping capability {cap} from the bounding set: {source}")]
    BoundingDrop {
        /// Capability name (or number, if the `caps` crate does not know it).
        cap: String,
        #[source]
        source: io::Error,
    },
    /// Reading or changing one of the thread's capability sets failed.
    #[error("{op} the {set} capability set: {source}")]
    Set {
        /// What we were doing ("clearing", "setting", "reading").
        op: &'static str,
        /// Which set ("ambient", "inheritable", "effective", "permitted", "bounding").
        set: &'static str,
        #[source]
        source: caps::errors::CapsError,
    },
    /// The sets read back after the change are not what we asked for.
    #[error("capability sets not as expected after dropping: {0}")]
    Verify(String),
}

/// The kept set: CHOWN DAC_OVERRIDE FSETID FOWNER NET_RAW SETGID SETUID SETFCAP SETPCAP
/// NET_BIND_SERVICE SYS_CHROOT KILL AUDIT_WRITE (Docker's default without MKNOD).
pub fn default_names() -> Vec<String> {
    DEFAULT_CAPS.iter().map(ToString::to_string).collect()
}

/// Drop every other capability from the bounding set, clear ambient and inheritable, set
/// effective=permitted=default set.
///
/// Must run as root with (at least) CAP_SETPCAP and the default capabilities effective, and
/// while the process is single-threaded (capabilities are per thread; a warning is logged if
/// other threads exist). Setting `no_new_privs` before or after this does not matter to it.
pub fn apply_default() -> Result<(), CapsError> {
    warn_if_multithreaded();

    let keep: CapsHashSet = DEFAULT_CAPS.iter().copied().collect();
    let keep_numbers: HashSet<u32> = DEFAULT_CAPS.iter().map(|c| u32::from(c.index())).collect();

    // 1. Bounding set first, while CAP_SETPCAP is certainly still effective.
    for cap in 0..=MAX_CAP_NUMBER {
        let present = match bounding_read(cap) {
            Ok(present) => present,
            // EINVAL: `cap` is beyond the kernel's last capability; so is every later one.
            Err(e) if e.raw_os_error() == Some(libc::EINVAL) => break,
            Err(source) => {
                return Err(CapsError::BoundingRead {
                    cap: cap_name(cap),
                    source,
                })
            }
        };
        if present && !keep_numbers.contains(&cap) {
            bounding_drop(cap).map_err(|source| CapsError::BoundingDrop {
                cap: cap_name(cap),
                source,
            })?;
        }
    }

    // 2. Ambient and inheritable: empty. A kernel without ambient capabilities (gVisor's
    //    refuses every PR_CAP_AMBIENT operation) has none to clear.
    let ambient = ambient_supported();
    if ambient {
        caps::clear(None, CapSet::Ambient).map_err(|source| CapsError::Set {
            op: "clearing",
            set: "ambient",
            source,
        })?;
    }
    caps::clear(None, CapSet::Inheritable).map_err(|source| CapsError::Set {
        op: "clearing",
        set: "inheritable",
        source,
    })?;

    // 3. Effective before permitted: the kernel rejects an effective set that is not a
    //    subset of the permitted one, and the `caps` crate changes one set per capset(2).
    caps::set(None, CapSet::Effective, &keep).map_err(|source| CapsError::Set {
        op: "setting",
        set: "effective",
        source,
    })?;
    caps::set(None, CapSet::Permitted, &keep).map_err(|source| CapsError::Set {
        op: "setting",
        set: "permitted",
        source,
    })?;

    verify(&keep, ambient)
}

/// Whether this kernel has ambient capabilities (Linux 4.3+; not gVisor's).
fn ambient_supported() -> bool {
    // SAFETY: PR_CAP_AMBIENT_IS_SET only reads this thread's ambient set.
    let r = unsafe {
        libc::prctl(
            libc::PR_CAP_AMBIENT,
            libc::PR_CAP_AMBIENT_IS_SET,
            0 as libc::c_ulong,
            0 as libc::c_ulong,
            0 as libc::c_ulong,
        )
    };
    r >= 0
}

/// Read every set back and check it is exactly what [`apply_default`] asked for.
fn verify(keep: &CapsHashSet, ambient: bool) -> Result<(), CapsError> {
    let expectations: [(CapSet, &'static str, bool); 5] = [
        (CapSet::Effective, "effective", true),
        (CapSet::Permitted, "permitted", true),
        (CapSet::Bounding, "bounding", true),
        (CapSet::Inheritable, "inheritable", false),
        (CapSet::Ambient, "ambient", false),
    ];
    for (set, name, should_be_default) in expectations {
        if matches!(set, CapSet::Ambient) && !ambient {
            continue;
        }
        let actual = caps::read(None, set).map_err(|source| CapsError::Set {
            op: "reading",
            set: name,
            source,
        })?;
        let expected = if should_be_default {
            keep.clone()
        } else {
            CapsHashSet::new()
        };
        if actual != expected {
            let mut extra: Vec<String> = actual
                .difference(&expected)
                .map(|c| c.to_string())
                .collect();
            let mut missing: Vec<String> = expected
                .difference(&actual)
                .map(|c| c.to_string())
                .collect();
            extra.sort();
            missing.sort();
            return Err(CapsError::Verify(format!(
                "{name} set: unexpected [{}], missing [{}]",
                extra.join(" "),
                missing.join(" ")
            )));
        }
    }
    Ok(())
}

/// `prctl(PR_CAPBSET_READ, cap)`: is `cap` in the calling thread's bounding set?
fn bounding_read(cap: u32) -> io::Result<bool> {
    capbset_prctl(libc::PR_CAPBSET_READ, cap).map(|ret| ret == 1)
}

/// `prctl(PR_CAPBSET_DROP, cap)`: remove `cap` from the calling thread's bounding set.
fn bounding_drop(cap: u32) -> io::Result<()> {
    capbset_prctl(libc::PR_CAPBSET_DROP, cap).map(|_| ())
}

/// One bounding-set `prctl` by capability number (so capabilities newer than the `caps`
/// crate are handled too).
fn capbset_prctl(op: libc::c_int, cap: u32) -> io::Result<libc::c_int> {
    // SAFETY: PR_CAPBSET_READ and PR_CAPBSET_DROP take a capability number by value and
    // touch no user memory; the unused trailing arguments are zero as the kernel requires.
    let ret = unsafe {
        libc::prctl(
            op,
            libc::c_ulong::from(cap),
            0 as libc::c_ulong,
            0 as libc::c_ulong,
            0 as libc::c_ulong,
        )
    };
    if ret < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(ret)
    }
}

/// "CAP_SYS_ADMIN (21)", or just the number for capabilities newer than the `caps` crate.
fn cap_name(cap: u32) -> String {
    caps::all()
        .into_iter()
        .find(|c| u32::from(c.index()) == cap)
        .map_or_else(|| format!("capability {cap}"), |c| format!("{c} ({cap})"))
}

/// Capability sets are per thread: dropping them in one thread of a multi-threaded process
/// leaves the other threads privileged. Warn (the sandbox's PID 1 should be single-threaded
/// here); `/proc` may not be mounted yet, in which case we cannot tell and stay quiet.
fn warn_if_multithreaded() {
    if let Ok(tasks) = std::fs::read_dir("/proc/self/task") {
        let threads = tasks.count();
        if threads > 1 {
            tracing::warn!(
                threads,
                "dropping capabilities in a multi-threaded process: only the calling thread \
                 (and what it spawns) is affected"
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_names_are_dockers_without_mknod() {
        let names = default_names();
        let expected = [
            "CAP_CHOWN",
            "CAP_DAC_OVERRIDE",
            "CAP_FSETID",
            "CAP_FOWNER",
            "CAP_NET_RAW",
            "CAP_SETGID",
            "CAP_SETUID",
            "CAP_SETFCAP",
            "CAP_SETPCAP",
            "CAP_NET_BIND_SERVICE",
            "CAP_SYS_CHROOT",
            "CAP_KILL",
            "CAP_AUDIT_WRITE",
        ];
        assert_eq!(names, expected);
        let unique: HashSet<&String> = names.iter().collect();
        assert_eq!(unique.len(), 13);
    }

    #[test]
    fn default_set_excludes_the_dangerous_ones() {
        for cap in [
            Capability::CAP_SYS_ADMIN,
            Capability::CAP_MKNOD,
            Capability::CAP_SYS_MODULE,
            Capability::CAP_SYS_PTRACE,
            Capability::CAP_SYS_RAWIO,
            Capability::CAP_SYS_TIME,
            Capability::CAP_NET_ADMIN,
            Capability::CAP_DAC_READ_SEARCH,
            Capability::CAP_SYS_RESOURCE,
            Capability::CAP_BPF,
            Capability::CAP_PERFMON,
        ] {
            assert!(!DEFAULT_CAPS.contains(&cap), "{cap} must not be kept");
        }
    }

    #[test]
    fn cap_names_render() {
        assert_eq!(cap_name(21), "CAP_SYS_ADMIN (21)");
        assert_eq!(cap_name(63), "capability 63");
    }

    // The end-to-end test (apply in a re-exec'd child, then exercise syscalls) lives in
    // `crate::seccomp::tests`, which applies caps and seccomp in the documented order.
}
