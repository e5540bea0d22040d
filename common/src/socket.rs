//! Socket options both sides set.

use std::io;
use std::os::fd::{AsRawFd, BorrowedFd};
use std::time::Duration;

/// Turns on TCP keepalive for `socket`: after `idle` without traffic the kernel
/// probes every `interval`, and gives the peer up after `count` probes go
/// unanswered — so a peer that vanished without a word (a laptop put to sleep,
/// a cable pulled) is noticed and what it held is given back.
pub fn set_keepalive(
    socket: BorrowedFd<'_>,
    idle: Duration,
    interval: Duration,
    count: u32,
) -> io::Result<()> {
    let secs = |d: Duration| libc::c_int::try_from(d.as_secs().max(1)).unwrap_or(libc::c_int::MAX);
    let count = libc::c_int::try_from(count).unwrap_or(libc::c_int::MAX);
    for (level, name, value) in [
        (libc::SOL_SOCKET, libc::SO_KEEPALIVE, 1),
        (libc::IPPROTO_TCP, libc::TCP_KEEPIDLE, secs(idle)),
        (libc::IPPROTO_TCP, libc::TCP_KEEPINTVL, secs(interval)),
        (libc::IPPROTO_TCP, libc::TCP_KEEPCNT, count),
    ] {
        set_option(socket, level, name, value)?;
    }
    Ok(())
}

/// `setsockopt(2)` of an integer option.
fn set_option(
    socket: BorrowedFd<'_>,
    level: libc::c_int,
    name: libc::c_int,
    value: libc::c_int,
) -> io::Result<()> {
    // SAFETY: a valid descriptor, and a pointer to one c_int with its size,
    // valid for the call.
    let ret = unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            level,
            name,
            (&value as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if ret != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsFd;

    #[test]
    fn keepalive_is_set_on_a_socket_and_refused_elsewhere() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let stream = std::net::TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (idle, interval) = (Duration::from_secs(30), Duration::from_secs(10));
        set_keepalive(stream.as_fd(), idle, interval, 3).unwrap();
        let not_a_socket = std::fs::File::open("/dev/null").unwrap();
        assert!(set_keepalive(not_a_socket.as_fd(), idle, interval, 3).is_err());
    }
}
