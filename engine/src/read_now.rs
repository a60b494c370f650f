//! A read that does not wait: what a client sent before its connection was accepted.
//!
//! Under a storm of connects, a client's request head is usually in the socket before
//! the shard accepts it. Reading it with one non-blocking `recv` right away saves the
//! connection an io_uring read, its completion and a task wake-up before the `101`. If
//! nothing has arrived yet, the caller reads through io_uring as usual.

#![allow(unsafe_code)]

use std::io;
use std::mem::MaybeUninit;
use std::os::fd::{AsRawFd, BorrowedFd};

/// Appends what `stream` has already received to `buf` (into its spare capacity, at
/// least `min_spare` bytes of it), without waiting: `Ok(0)` is end of stream, and
/// `ErrorKind::WouldBlock` means nothing has arrived yet.
pub(crate) fn read_now(
    stream: &impl AsRawFd,
    buf: &mut Vec<u8>,
    min_spare: usize,
) -> io::Result<usize> {
    buf.reserve(min_spare);
    // SAFETY: the descriptor belongs to `stream`, which is borrowed for this whole
    // function, so it stays open (and is not reused for another file) while the
    // `BorrowedFd` lives; the `BorrowedFd` does not outlive this call.
    let fd = unsafe { BorrowedFd::borrow_raw(stream.as_raw_fd()) };
    let spare: &mut [MaybeUninit<u8>] = buf.spare_capacity_mut();
    let n = socket2::SockRef::from(&fd).recv_with_flags(spare, libc::MSG_DONTWAIT)?;
    let len = buf.len() + n;
    // SAFETY: `recv` initialized the first `n` bytes of the spare capacity (it never
    // reports more than it wrote, and `n <= spare.len()`), so `len` bytes are initialized.
    unsafe { buf.set_len(len) };
    Ok(n)
}

#[cfg(test)]
mod tests {
    use std::io::Write;

    use super::*;

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
