//! How many bytes the kernel holds unsent for a TCP socket: the
//! `SIOCOUTQNSD` ioctl (Linux), which no safe wrapper in the dependency tree
//! offers. The one module of the crate with `unsafe` (see `lib.rs`).
//!
//! Why it is needed (DESIGN "Freshness"): the slow-consumer policy must see
//! what a client has not received, and the kernel's share of it is invisible
//! otherwise. `TCP_NOTSENT_LOWAT` bounds it (see `net::worker`); this
//! measures it. Called by a worker after a write that would block, and every
//! housekeeping turn (100 ms) for sockets that held unsent bytes: never per
//! message, so its cost (one syscall, ~0.3 µs) is off the fan-out path.
#![allow(unsafe_code)]

use std::io;
use std::os::fd::AsRawFd;

/// `SIOCOUTQNSD` from `<linux/sockios.h>`: unsent bytes in the send queue.
#[cfg(target_os = "linux")]
const SIOCOUTQNSD: libc::Ioctl = 0x894B;

/// Bytes written to `socket` that the kernel has not sent yet.
#[cfg(target_os = "linux")]
pub fn unsent_bytes(socket: &impl AsRawFd) -> io::Result<usize> {
    let mut n: libc::c_int = 0;
    // SAFETY: SIOCOUTQNSD writes exactly one `c_int` through its argument,
    // which points to `n`, alive and writable for the whole call; the fd is
    // borrowed from a live socket for the duration of the call.
    let r = unsafe { libc::ioctl(socket.as_raw_fd(), SIOCOUTQNSD, &mut n as *mut libc::c_int) };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(n.max(0) as usize)
}

/// Other systems: unknown, so 0 (the kernel's share is then bounded only by
/// `TCP_NOTSENT_LOWAT` where it exists).
#[cfg(not(target_os = "linux"))]
pub fn unsent_bytes(_socket: &impl AsRawFd) -> io::Result<usize> {
    Ok(0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;
    use std::net::{TcpListener, TcpStream};

    /// A peer that does not read: what the kernel could not send is
    /// reported, and is bounded by `TCP_NOTSENT_LOWAT`.
    #[test]
    fn measures_unsent_bytes_bounded_by_notsent_lowat() {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let peer =
            socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
        peer.set_recv_buffer_size(4096).unwrap();
        peer.connect(&l.local_addr().unwrap().into()).unwrap();
        let (mut s, _) = l.accept().unwrap();
        assert_eq!(unsent_bytes(&s).unwrap(), 0);
        socket2::SockRef::from(&s)
            .set_tcp_notsent_lowat(16 * 1024)
            .unwrap();
        s.set_nonblocking(true).unwrap();
        let chunk = [7u8; 1000];
        let mut accepted = 0;
        for _ in 0..10_000 {
            match s.write(&chunk) {
                Ok(n) => accepted += n,
                Err(_) => break,
            }
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
        let unsent = unsent_bytes(&s).unwrap();
        assert!(unsent > 8 * 1024, "{unsent} unsent of {accepted} accepted");
        assert!(unsent <= 16 * 1024 + 1000, "{unsent} unsent");
        assert!(accepted < 64 * 1024, "the kernel took {accepted} bytes");
        drop(peer);
        let _ = TcpStream::connect(l.local_addr().unwrap());
    }
}
