//! The sockets sessions relay over: a TCP connection, or the local end of a TLS bridge.
//!
//! A TLS connection (client side or server side) is terminated by a small task that copies
//! between the TLS stream and one end of a Unix socket pair (`tls::bridge`); the session owns
//! the other end. The relay loop therefore always works on a plain socket whose halves can be
//! borrowed separately and whose reads and writes are cancel-safe, which a TLS stream's are
//! not (rustls buffers written bytes until a later write or flush).

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{tcp, unix, TcpStream, UnixStream};

/// A connected socket: plain TCP, or the session's end of a TLS bridge.
#[derive(Debug)]
pub enum Socket {
    Tcp(TcpStream),
    Bridged(UnixStream),
}

/// The borrowed read half of a [`Socket`].
pub enum ReadHalf<'a> {
    Tcp(tcp::ReadHalf<'a>),
    Bridged(unix::ReadHalf<'a>),
}

/// The borrowed write half of a [`Socket`].
pub enum WriteHalf<'a> {
    Tcp(tcp::WriteHalf<'a>),
    Bridged(unix::WriteHalf<'a>),
}

impl Socket {
    /// Borrows the read and write halves, to wait on both at once.
    pub fn split(&mut self) -> (ReadHalf<'_>, WriteHalf<'_>) {
        match self {
            Socket::Tcp(s) => {
                let (r, w) = s.split();
                (ReadHalf::Tcp(r), WriteHalf::Tcp(w))
            }
            Socket::Bridged(s) => {
                let (r, w) = s.split();
                (ReadHalf::Bridged(r), WriteHalf::Bridged(w))
            }
        }
    }

    /// Reads what is already there without waiting (`WouldBlock` when nothing is).
    pub fn try_read(&self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Socket::Tcp(s) => s.try_read(buf),
            Socket::Bridged(s) => s.try_read(buf),
        }
    }

    /// Writes without waiting (`WouldBlock` when the socket takes nothing now). One buffer goes
    /// out with send(2), which takes a shorter path through the kernel than writev(2).
    pub fn try_write_vectored(&self, bufs: &[io::IoSlice<'_>]) -> io::Result<usize> {
        match (self, bufs) {
            (Socket::Tcp(s), [one]) => s.try_write(one),
            (Socket::Bridged(s), [one]) => s.try_write(one),
            (Socket::Tcp(s), _) => s.try_write_vectored(bufs),
            (Socket::Bridged(s), _) => s.try_write_vectored(bufs),
        }
    }

    /// Whether the peer is reached through TLS.
    pub fn is_tls(&self) -> bool {
        matches!(self, Socket::Bridged(_))
    }
}

/// Forwards `AsyncRead` to whichever stream the enum holds.
macro_rules! delegate_read {
    ($ty:ty) => {
        impl AsyncRead for $ty {
            fn poll_read(
                self: Pin<&mut Self>,
                cx: &mut Context<'_>,
                buf: &mut ReadBuf<'_>,
            ) -> Poll<io::Result<()>> {
                match self.get_mut() {
                    Self::Tcp(s) => Pin::new(s).poll_read(cx, buf),
                    Self::Bridged(s) => Pin::new(s).poll_read(cx, buf),
                }
            }
        }
    };
}

/// Forwards `AsyncWrite` (vectored writes included) to whichever stream the enum holds.
macro_rules! delegate_write {
    ($ty:ty) => {
        impl AsyncWrite for $ty {
            fn poll_write(
                self: Pin<&mut Self>,
                cx: &mut Context<'_>,
                buf: &[u8],
            ) -> Poll<io::Result<usize>> {
                match self.get_mut() {
                    Self::Tcp(s) => Pin::new(s).poll_write(cx, buf),
                    Self::Bridged(s) => Pin::new(s).poll_write(cx, buf),
                }
            }

            fn poll_write_vectored(
                self: Pin<&mut Self>,
                cx: &mut Context<'_>,
                bufs: &[io::IoSlice<'_>],
            ) -> Poll<io::Result<usize>> {
                if let [one] = bufs {
                    // One buffer: send(2) takes a shorter path through the kernel than writev(2).
                    return self.poll_write(cx, one);
                }
                match self.get_mut() {
                    Self::Tcp(s) => Pin::new(s).poll_write_vectored(cx, bufs),
                    Self::Bridged(s) => Pin::new(s).poll_write_vectored(cx, bufs),
                }
            }

            fn is_write_vectored(&self) -> bool {
                match self {
                    Self::Tcp(s) => s.is_write_vectored(),
                    Self::Bridged(s) => s.is_write_vectored(),
                }
            }

            fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
                match self.get_mut() {
                    Self::Tcp(s) => Pin::new(s).poll_flush(cx),
                    Self::Bridged(s) => Pin::new(s).poll_flush(cx),
                }
            }

            fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
                match self.get_mut() {
                    Self::Tcp(s) => Pin::new(s).poll_shutdown(cx),
                    Self::Bridged(s) => Pin::new(s).poll_shutdown(cx),
                }
            }
        }
    };
}

delegate_read!(Socket);
delegate_write!(Socket);
delegate_read!(ReadHalf<'_>);
delegate_write!(WriteHalf<'_>);
