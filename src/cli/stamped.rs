//! The load generator's socket: reads that also return the kernel's receive time.
//!
//! `quotad bench` shares the machine with the server it measures. Timing an answer when the load
//! generator gets round to reading it adds the load generator's own scheduling delays (its
//! runtime busy with other connections, its thread waiting for a core) to the server's latency.
//! On Linux a TCP socket with `SO_TIMESTAMPNS` hands back, with every `recvmsg`, the time the
//! kernel queued the last segment read into the socket: the moment the answer was there to be
//! read, whatever the reader was doing. The bench reports both figures: latency at the socket
//! (write → the answer is in the receive queue) and latency as the load generator read it.
//!
//! The socket is a `std::net::TcpStream` under tokio's `AsyncFd`, so that a short read can clear
//! the readiness it was given (as tokio's own `TcpStream` does) without the race a second call
//! would have: the next read waits for epoll instead of costing a `recvmsg` that finds nothing.

use std::io::{self, Write as _};
use std::net::TcpStream;
use std::os::fd::AsRawFd;

use bytes::BytesMut;
use tokio::io::unix::AsyncFd;

/// A connected, non-blocking TCP socket with receive timestamps when the kernel gives them.
pub struct StampedStream {
    fd: AsyncFd<TcpStream>,
    stamped: bool,
}

/// CLOCK_REALTIME in nanoseconds: the clock the kernel's receive timestamps are on.
pub fn realtime_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid, writable timespec; CLOCK_REALTIME always exists.
    unsafe { libc::clock_gettime(libc::CLOCK_REALTIME, &mut ts) };
    timespec_ns(&ts)
}

fn timespec_ns(ts: &libc::timespec) -> u64 {
    (ts.tv_sec.max(0) as u64)
        .saturating_mul(1_000_000_000)
        .saturating_add(ts.tv_nsec.max(0) as u64)
}

impl StampedStream {
    /// Wraps a connected tokio stream (set non-blocking, no Nagle) and, if `timestamps`, asks for
    /// receive timestamps.
    ///
    /// They are not free: while any socket on the machine wants them, the kernel reads the clock
    /// for every packet it receives, the server's included (about 2 % of each side's CPU in an
    /// unpipelined saturation run here). So the bench asks for them only when it paces its
    /// load to measure latency.
    pub fn new(stream: tokio::net::TcpStream, timestamps: bool) -> io::Result<Self> {
        stream.set_nodelay(true)?;
        let std = stream.into_std()?;
        std.set_nonblocking(true)?;
        let one: libc::c_int = 1;
        let stamped = timestamps
            // SAFETY: a valid socket descriptor and a c_int option value of the size passed.
            && unsafe {
                libc::setsockopt(
                    std.as_raw_fd(),
                    libc::SOL_SOCKET,
                    libc::SO_TIMESTAMPNS,
                    (&one as *const libc::c_int).cast(),
                    std::mem::size_of::<libc::c_int>() as libc::socklen_t,
                )
            } == 0;
        // SAFETY: the `TcpStream` owns its descriptor, which stays open and the same until the
        // `AsyncFd` (its only owner) is dropped.
        let fd = unsafe { AsyncFd::register(std) }.map_err(io::Error::from)?;
        Ok(StampedStream { fd, stamped })
    }

    /// Whether reads return the kernel's receive time.
    pub fn stamped(&self) -> bool {
        self.stamped
    }

    /// Writes all of `buf`.
    pub async fn write_all(&self, mut buf: &[u8]) -> io::Result<()> {
        while !buf.is_empty() {
            let mut guard = self.fd.writable().await?;
            match guard.try_io(|s| s.get_ref().write(buf)) {
                Ok(Ok(0)) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(Ok(n)) => buf = &buf[n..],
                Ok(Err(e)) => return Err(e),
                Err(_would_block) => continue,
            }
        }
        Ok(())
    }

    /// Reads what the socket holds into `buf`: the bytes read (0 at end of stream) and the
    /// kernel's receive time of the last segment read (CLOCK_REALTIME ns), when there is one.
    pub async fn read(&self, buf: &mut BytesMut) -> io::Result<(usize, Option<u64>)> {
        if buf.capacity() - buf.len() < 4096 {
            buf.reserve(64 * 1024);
        }
        loop {
            let mut guard = self.fd.readable().await?;
            let spare = buf.spare_capacity_mut();
            let room = spare.len();
            let fd = self.fd.as_raw_fd();
            let mut iov = libc::iovec {
                iov_base: spare.as_mut_ptr().cast(),
                iov_len: room,
            };
            // Room for one SCM_TIMESTAMPNS control message (a timespec), 8-byte aligned.
            let mut control = [0u64; 8];
            // SAFETY: zeroed msghdr is a valid "no name, no iov, no control" header; fields set below.
            let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
            msg.msg_iov = &mut iov;
            msg.msg_iovlen = 1;
            msg.msg_control = control.as_mut_ptr().cast();
            msg.msg_controllen = std::mem::size_of_val(&control) as _;
            // SAFETY: `iov` points into `buf`'s spare capacity of `room` bytes and `control` is
            // writable for `msg_controllen` bytes; both outlive the call.
            let n = unsafe { libc::recvmsg(fd, &mut msg, libc::MSG_DONTWAIT) };
            if n < 0 {
                let e = io::Error::last_os_error();
                if e.kind() == io::ErrorKind::WouldBlock {
                    guard.clear_ready();
                    continue;
                }
                if e.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                return Err(e);
            }
            let n = n as usize;
            // SAFETY: the kernel wrote `n <= room` bytes into the spare capacity.
            unsafe { buf.set_len(buf.len() + n) };
            if n > 0 && n < room {
                // A short read drained the receive queue (epoll is edge-triggered): wait for the
                // next event. Clearing only the readiness this guard saw keeps a newer event.
                guard.clear_ready();
            }
            return Ok((n, receive_time(&msg)));
        }
    }
}

/// The SCM_TIMESTAMPNS control message of a `recvmsg`, if any.
fn receive_time(msg: &libc::msghdr) -> Option<u64> {
    let mut found = None;
    // SAFETY: `msg` was filled by recvmsg; the CMSG_* macros walk its control buffer within
    // msg_controllen, and the timestamp is read unaligned from inside the message.
    unsafe {
        let mut c = libc::CMSG_FIRSTHDR(msg);
        while !c.is_null() {
            if (*c).cmsg_level == libc::SOL_SOCKET && (*c).cmsg_type == libc::SO_TIMESTAMPNS {
                let ts = std::ptr::read_unaligned(libc::CMSG_DATA(c).cast::<libc::timespec>());
                found = Some(timespec_ns(&ts));
            }
            c = libc::CMSG_NXTHDR(msg, c);
        }
    }
    found.filter(|&t| t > 0)
}
