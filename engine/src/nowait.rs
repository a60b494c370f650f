//! System calls that do not wait: what is already there when a storm of connects arrives.
//!
//! - `accept_now`: the connections already waiting in a listener's backlog. After one
//!   io_uring accept completes, the shard takes the rest of the queue with plain
//!   `accept4` calls (the listener is non-blocking), as an epoll server does, instead of
//!   one io_uring accept and its completion per connection per turn. A connection then
//!   waits in the shard, where its `101` is next, rather than in the kernel's backlog.
//! - `read_now`: a client's request head is usually in the socket before the shard
//!   accepts it. Reading it with one non-blocking `recv` right away saves the connection
//!   an io_uring read, its completion and a task wake-up before the `101`. If nothing has
//!   arrived yet, the caller reads through io_uring as usual. A session uses it too, to
//!   take the rest of a publisher's burst before fanning out its start (`session.rs`).
//! - `defer_accept`: the listeners ask the kernel to hand a connection over only once its
//!   client has sent something, so `read_now` finds the head there almost always.

#![allow(unsafe_code)]

use std::io;
use std::mem::MaybeUninit;
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, BorrowedFd};

use monoio::io::OwnedReadHalf;
use monoio::net::TcpStream;

/// Borrows the descriptor of `owner` for as long as `owner` is borrowed.
fn borrow_fd(owner: &impl AsRawFd) -> BorrowedFd<'_> {
    // SAFETY: the descriptor belongs to `owner`, which is borrowed for the lifetime of
    // the returned `BorrowedFd`, so it stays open (and is not reused for another file)
    // while the `BorrowedFd` lives.
    unsafe { BorrowedFd::borrow_raw(owner.as_raw_fd()) }
}

/// The stream under a WebSocket session's read half, for `read_now`.
pub(crate) fn stream_of(reader: &OwnedReadHalf<TcpStream>) -> &TcpStream {
    // SAFETY: the halves share the stream through an `UnsafeCell`, and monoio only makes
    // a `&mut` to it inside an I/O call of one half, which ends before that call returns
    // (an operation in flight holds a clone of the descriptor, not a reference). The
    // halves live on this thread, so while the caller runs no such call is under way and
    // no `&mut` exists; the shared reference is tied to the borrow of `reader`.
    unsafe { &*reader.0.get() }
}

/// Takes one connection from `listener`'s backlog without waiting: `ErrorKind::WouldBlock`
/// means the backlog is empty. `listener` must be non-blocking (every shard's is), or
/// this waits for a connection.
pub(crate) fn accept_now(listener: &impl AsRawFd) -> io::Result<(TcpStream, SocketAddr)> {
    let fd = borrow_fd(listener);
    // `accept4` with `SOCK_CLOEXEC`, as monoio's io_uring accept makes it.
    let (socket, peer) = socket2::SockRef::from(&fd).accept()?;
    let peer = peer
        .as_socket()
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "not an IP peer"))?;
    let stream = TcpStream::from_std(std::net::TcpStream::from(socket))?;
    Ok((stream, peer))
}

/// Appends what `stream` has already received to `buf` (into its spare capacity, at
/// least `min_spare` bytes of it), without waiting: `Ok(0)` is end of stream, and
/// `ErrorKind::WouldBlock` means nothing has arrived yet.
pub(crate) fn read_now(
    stream: &impl AsRawFd,
    buf: &mut Vec<u8>,
    min_spare: usize,
) -> io::Result<usize> {
    buf.reserve(min_spare);
    let fd = borrow_fd(stream);
    let spare: &mut [MaybeUninit<u8>] = buf.spare_capacity_mut();
    let n = socket2::SockRef::from(&fd).recv_with_flags(spare, libc::MSG_DONTWAIT)?;
    let len = buf.len() + n;
    // SAFETY: `recv` initialized the first `n` bytes of the spare capacity (it never
    // reports more than it wrote, and `n <= spare.len()`), so `len` bytes are initialized.
    unsafe { buf.set_len(len) };
    Ok(n)
}

/// How long the kernel holds a new connection back from `accept` while its client has
/// sent nothing (`TCP_DEFER_ACCEPT`, as nginx's `listen … deferred`). Every protocol
/// Ringcast speaks (HTTP, WebSocket, SSE, the PROXY header) has the client speak first,
/// so a connection normally reaches the shard with its request head already in the
/// socket: `read_now` takes it at once, and the shard never arms an io_uring read and
/// waits for a wake-up between the accept and the head. A client that stays silent is
/// accepted when this runs out (at the kernel's next SYN-ACK retransmission after it),
/// and the handshake deadline applies from then.
const DEFER_ACCEPT_SECS: libc::c_int = 1;

/// Sets [`DEFER_ACCEPT_SECS`] on a listening socket.
pub(crate) fn defer_accept(socket: &socket2::Socket) -> io::Result<()> {
    let secs = DEFER_ACCEPT_SECS;
    // SAFETY: setsockopt(2) reads `size_of::<c_int>()` bytes from `&secs`, which lives
    // across the call, and writes nothing; the descriptor is `socket`'s, open while it
    // is borrowed.
    let rc = unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            libc::IPPROTO_TCP,
            libc::TCP_DEFER_ACCEPT,
            (&secs as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// The listener's `TCP_DEFER_ACCEPT` in seconds, as the kernel reports it (for tests).
#[cfg(test)]
pub(crate) fn deferred_accept_secs(listener: &std::net::TcpListener) -> io::Result<i32> {
    let mut secs: libc::c_int = 0;
    let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: getsockopt(2) writes at most `len` bytes into `secs` and the new length
    // into `len`, both live across the call; the descriptor is `listener`'s.
    let rc = unsafe {
        libc::getsockopt(
            listener.as_raw_fd(),
            libc::IPPROTO_TCP,
            libc::TCP_DEFER_ACCEPT,
            (&mut secs as *mut libc::c_int).cast(),
            &mut len,
        )
    };
    if rc == 0 {
        Ok(secs)
    } else {
        Err(io::Error::last_os_error())
    }
}

#[cfg(test)]
mod tests {
    use std::io::Write;

    use monoio::io::AsyncReadRent;

    use super::*;

    #[test]
    fn accepts_what_waits_in_the_backlog_and_says_would_block_when_it_is_empty() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let mut runtime = monoio::RuntimeBuilder::<monoio::FusionDriver>::new()
            .build()
            .unwrap();
        runtime.block_on(async {
            let err = accept_now(&listener).unwrap_err();
            assert_eq!(err.kind(), io::ErrorKind::WouldBlock);

            let clients: Vec<_> = (0..3)
                .map(|_| std::net::TcpStream::connect(listener.local_addr().unwrap()).unwrap())
                .collect();
            // Loopback queues a connection before `connect` returns; still, wait for it
            // rather than assume it (bounded).
            let mut accepted = Vec::new();
            for _ in 0..1000 {
                match accept_now(&listener) {
                    Ok((stream, peer)) => accepted.push((stream, peer)),
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                        if accepted.len() == clients.len() {
                            break;
                        }
                        std::thread::sleep(std::time::Duration::from_millis(1))
                    }
                    Err(e) => panic!("{e}"),
                }
            }
            let mut peers: Vec<_> = accepted.iter().map(|(_, peer)| *peer).collect();
            let mut expected: Vec<_> = clients.iter().map(|c| c.local_addr().unwrap()).collect();
            peers.sort();
            expected.sort();
            assert_eq!(peers, expected);

            // The accepted socket is a working monoio stream.
            let (mut stream, _) = accepted.remove(0);
            let client = clients
                .iter()
                .find(|c| c.local_addr().unwrap() == stream.peer_addr().unwrap())
                .unwrap();
            (&*client).write_all(b"hi").unwrap();
            let (n, buf) = stream.read(vec![0u8; 8]).await;
            assert_eq!(&buf[..n.unwrap()], b"hi");
        });
    }

    #[test]
    fn reads_what_arrived_says_would_block_when_nothing_did_and_zero_at_eof() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let mut client = std::net::TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (server, _) = listener.accept().unwrap();
        let mut buf = b"GET".to_vec();
        let err = read_now(&server, &mut buf, 64).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::WouldBlock);
        assert_eq!(buf, b"GET");

        client.write_all(b" / HTTP/1.1\r\n").unwrap();
        // Loopback delivers within the write; still, wait for readability rather than
        // assume it (bounded).
        let mut n = 0;
        for _ in 0..1000 {
            match read_now(&server, &mut buf, 64) {
                Ok(k) => {
                    n = k;
                    break;
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    std::thread::sleep(std::time::Duration::from_millis(1))
                }
                Err(e) => panic!("{e}"),
            }
        }
        assert_eq!(n, 13);
        assert_eq!(buf, b"GET / HTTP/1.1\r\n");

        drop(client);
        let mut eof = None;
        for _ in 0..1000 {
            match read_now(&server, &mut buf, 64) {
                Ok(k) => {
                    eof = Some(k);
                    break;
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    std::thread::sleep(std::time::Duration::from_millis(1))
                }
                Err(e) => panic!("{e}"),
            }
        }
        assert_eq!(eof, Some(0));
    }
}
