//! Pseudo-terminals for durable processes: open a pair, resize, and non-blocking I/O on the
//! master (registered with tokio's reactor).

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

use tokio::io::unix::AsyncFd;
use warren_proto::PtySize;

/// A new pseudo-terminal: the master (non-blocking, CLOEXEC) and the slave (CLOEXEC; the
/// child gets copies without the flag).
pub(crate) struct Pair {
    pub master: OwnedFd,
    pub slave: OwnedFd,
}

fn winsize(size: PtySize) -> libc::winsize {
    libc::winsize {
        ws_row: size.rows,
        ws_col: size.cols,
        ws_xpixel: 0,
        ws_ypixel: 0,
    }
}

pub(crate) fn open(size: PtySize) -> io::Result<Pair> {
    let mut master: libc::c_int = -1;
    let mut slave: libc::c_int = -1;
    let ws = winsize(size);
    // SAFETY: openpty writes the two descriptors through valid pointers to locals; name and
    // termios are optional (NULL); it reads the window size from a valid local.
    let r = unsafe {
        libc::openpty(
            &mut master,
            &mut slave,
            std::ptr::null_mut(),
            std::ptr::null(),
            &ws,
        )
    };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: openpty succeeded: both are new descriptors that only we own.
    let (master, slave) = unsafe { (OwnedFd::from_raw_fd(master), OwnedFd::from_raw_fd(slave)) };
    for fd in [&master, &slave] {
        // SAFETY: fcntl on a descriptor we own.
        if unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_SETFD, libc::FD_CLOEXEC) } < 0 {
            return Err(io::Error::last_os_error());
        }
    }
    // SAFETY: fcntl on a descriptor we own.
    let flags = unsafe { libc::fcntl(master.as_raw_fd(), libc::F_GETFL) };
    if flags < 0
        // SAFETY: fcntl on a descriptor we own.
        || unsafe { libc::fcntl(master.as_raw_fd(), libc::F_SETFL, flags | libc::O_NONBLOCK) } < 0
    {
        return Err(io::Error::last_os_error());
    }
    Ok(Pair { master, slave })
}

/// The master side, registered with the reactor.
pub(crate) type Master = AsyncFd<OwnedFd>;

pub(crate) fn resize(master: &Master, size: PtySize) -> io::Result<()> {
    let ws = winsize(size);
    // SAFETY: TIOCSWINSZ reads a `struct winsize` from a valid local.
    if unsafe { libc::ioctl(master.as_raw_fd(), libc::TIOCSWINSZ, &ws) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// One non-blocking read; `Ok(0)` is EOF (EIO: every slave descriptor is closed).
pub(crate) fn try_read(master: &Master, buf: &mut [u8]) -> io::Result<usize> {
    // SAFETY: read writes at most `buf.len()` bytes into the valid buffer.
    let n = unsafe { libc::read(master.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
    if n < 0 {
        let e = io::Error::last_os_error();
        if e.raw_os_error() == Some(libc::EIO) {
            return Ok(0);
        }
        return Err(e);
    }
    Ok(n as usize)
}

/// One non-blocking write.
pub(crate) fn try_write(master: &Master, buf: &[u8]) -> io::Result<usize> {
    // SAFETY: write reads at most `buf.len()` bytes from the valid buffer.
    let n = unsafe { libc::write(master.as_raw_fd(), buf.as_ptr().cast(), buf.len()) };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(n as usize)
}

/// Reads from the master until data or EOF, awaiting readability.
pub(crate) async fn read(master: &Master, buf: &mut [u8]) -> io::Result<usize> {
    loop {
        let mut guard = master.readable().await?;
        match guard.try_io(|fd| try_read(fd, buf)) {
            Ok(res) => return res,
            Err(_would_block) => continue,
        }
    }
}

/// Writes all of `buf`, awaiting writability (backpressure from the terminal).
pub(crate) async fn write_all(master: &Master, mut buf: &[u8]) -> io::Result<()> {
    while !buf.is_empty() {
        let mut guard = master.writable().await?;
        match guard.try_io(|fd| try_write(fd, buf)) {
            Ok(Ok(n)) => buf = &buf[n..],
            Ok(Err(e)) => return Err(e),
            Err(_would_block) => continue,
        }
    }
    Ok(())
}
