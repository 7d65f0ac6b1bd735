//! The few system calls on the hot path, made directly.
//!
//! glibc's `read` and `send` are thread-cancellation points: in a process with more
//! than one thread (any program with a worker pool, or a loop not on the main
//! thread) each call brackets the system call with two atomic updates of the
//! thread's cancellation state. Nothing in Rust uses `pthread_cancel`, so on Linux
//! these go through `syscall(2)`, which skips that bookkeeping. Other platforms use
//! the ordinary libc calls.
//!
//! This module must stay a thin, safe-signature layer over raw calls: no buffering,
//! no retries, no policy. Errors come back as `io::Error` from `errno`.

use std::io;
use std::os::fd::RawFd;

/// `read(2)` into `buf`'s first `len` bytes; the byte count, 0 at end of file.
///
/// # Safety
/// `buf` must be valid for writes of `len` bytes.
#[inline]
pub(crate) unsafe fn read(fd: RawFd, buf: *mut u8, len: usize) -> io::Result<usize> {
    #[cfg(target_os = "linux")]
    // SAFETY: the caller guarantees `buf` is writable for `len` bytes.
    let n = unsafe { libc::syscall(libc::SYS_read, fd, buf, len) } as isize;
    #[cfg(not(target_os = "linux"))]
    // SAFETY: as above.
    let n = unsafe { libc::read(fd, buf.cast(), len) };
    if n < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(n as usize)
    }
}

/// `send(2)` of `data` without `SIGPIPE` (a peer that is gone is an `EPIPE` error,
/// not a signal that kills the process); the byte count accepted.
#[inline]
pub(crate) fn send(fd: RawFd, data: &[u8]) -> io::Result<usize> {
    #[cfg(target_os = "linux")]
    // SAFETY: `data` is valid for reads of its length; the address arguments are
    // null, as `send(2)` passes them to `sendto(2)`.
    let n = unsafe {
        libc::syscall(
            libc::SYS_sendto,
            fd,
            data.as_ptr(),
            data.len(),
            libc::MSG_NOSIGNAL,
            std::ptr::null::<libc::sockaddr>(),
            0 as libc::socklen_t,
        )
    } as isize;
    #[cfg(not(target_os = "linux"))]
    // SAFETY: `data` is valid for reads of its length. (No MSG_NOSIGNAL on every
    // platform; Rust programs ignore SIGPIPE by default.)
    let n = unsafe { libc::send(fd, data.as_ptr().cast(), data.len(), 0) };
    if n < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(n as usize)
    }
}

/// The monotonic clock in nanoseconds: what `Instant` reads, without the
/// conversions around it (the loop reads it once per dispatch). On Linux this is
/// `CLOCK_MONOTONIC`, the clock behind `Instant`, through the vDSO.
#[inline]
pub(crate) fn mono_ns() -> u64 {
    #[cfg(target_os = "linux")]
    {
        let mut ts = libc::timespec {
            tv_sec: 0,
            tv_nsec: 0,
        };
        // SAFETY: `ts` is a valid out-pointer; CLOCK_MONOTONIC always exists on Linux.
        unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
        ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
    }
    #[cfg(not(target_os = "linux"))]
    {
        use std::sync::OnceLock;
        use std::time::Instant;
        static BASE: OnceLock<Instant> = OnceLock::new();
        BASE.get_or_init(Instant::now).elapsed().as_nanos() as u64
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;
    use std::os::fd::AsRawFd;
    use std::os::unix::net::UnixStream;

    #[test]
    fn read_send_and_errors() {
        let (a, mut b) = UnixStream::pair().unwrap();
        a.set_nonblocking(true).unwrap();
        let mut buf = [0u8; 16];
        let e = unsafe { read(a.as_raw_fd(), buf.as_mut_ptr(), buf.len()) }.unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::WouldBlock);
        b.write_all(b"hello").unwrap();
        let n = unsafe { read(a.as_raw_fd(), buf.as_mut_ptr(), buf.len()) }.unwrap();
        assert_eq!(&buf[..n], b"hello");
        assert_eq!(send(a.as_raw_fd(), b"back").unwrap(), 4);
        let mut back = [0u8; 4];
        std::io::Read::read_exact(&mut b, &mut back).unwrap();
        assert_eq!(&back, b"back");
        drop(b);
        // The peer is gone: EPIPE, and no SIGPIPE kills the test process.
        let e = send(a.as_raw_fd(), b"x").unwrap_err();
        assert_eq!(e.raw_os_error(), Some(libc::EPIPE));
        assert_eq!(
            unsafe { read(a.as_raw_fd(), buf.as_mut_ptr(), 1) }.unwrap(),
            0
        );
        assert!(send(-1, b"x").is_err());
    }

    #[test]
    fn mono_ns_follows_instant() {
        let (i0, n0) = (std::time::Instant::now(), mono_ns());
        std::thread::sleep(std::time::Duration::from_millis(20));
        let (n1, i1) = (mono_ns(), std::time::Instant::now());
        let by_instant = i1.duration_since(i0).as_nanos() as i128;
        let by_mono = (n1 - n0) as i128;
        // Same clock, read a few nanoseconds apart at each end.
        assert!(
            (by_instant - by_mono).abs() < 1_000_000,
            "{by_instant} vs {by_mono}"
        );
        assert!(by_mono >= 20_000_000);
    }
}
