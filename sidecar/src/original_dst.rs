//! The destination a client dialled before iptables redirected it here.
//!
//! A `REDIRECT` rule rewrites the destination to the sidecar's port, but the
//! kernel's connection tracking remembers the original; `SO_ORIGINAL_DST`
//! (IPv4) and `IP6T_SO_ORIGINAL_DST` (IPv6) read it back. A connection that was
//! not redirected has no such entry and yields an error.

use std::io;
use std::net::SocketAddr;

use socket2::SockRef;
use tokio::net::TcpStream;

/// The original destination of a redirected connection.
pub fn original_dst(stream: &TcpStream) -> io::Result<SocketAddr> {
    let sock = SockRef::from(stream);
    let addr = if stream.local_addr()?.is_ipv4() {
        sock.original_dst_v4()?
    } else {
        sock.original_dst_v6()?
    };
    addr.as_socket().ok_or_else(|| {
        io::Error::new(
            io::ErrorKind::InvalidData,
            "original destination is not an IP address",
        )
    })
}
