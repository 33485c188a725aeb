//! The gRPC port's connections: each holds one of `--max-grpc-connections` permits and counts in
//! `quotad_open_connections{transport="grpc"}`; a connection beyond the limit is closed at once
//! and counted in `quotad_rejected_connections_total`, as on the other transports.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use futures_util::Stream;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::metrics::{ConnectionGuard, Metrics, Transport};
use crate::server::accept_admitted;

/// An admitted connection: the socket, its permit and its place in the metrics.
pub(super) struct Conn {
    io: TcpStream,
    _permit: OwnedSemaphorePermit,
    _counted: ConnectionGuard,
}

impl AsyncRead for Conn {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl AsyncWrite for Conn {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

impl tonic::transport::server::Connected for Conn {
    type ConnectInfo = tonic::transport::server::TcpConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.io.connect_info()
    }
}

/// The connections `listener` admits, until `shutdown` completes.
pub(super) fn incoming(
    listener: TcpListener,
    max: usize,
    metrics: Arc<Metrics>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> impl Stream<Item = std::io::Result<Conn>> {
    let permits = Arc::new(Semaphore::new(max.max(1)));
    let state = (listener, permits, metrics, Box::pin(shutdown));
    futures_util::stream::unfold(
        state,
        |(listener, permits, metrics, mut shutdown)| async move {
            // A refused connection is closed without a word: an HTTP/2 client sees it end.
            let (io, permit) = accept_admitted(
                &listener,
                &permits,
                &mut shutdown.as_mut(),
                &metrics,
                Transport::Grpc,
                Vec::new,
            )
            .await?;
            let conn = Conn {
                io,
                _permit: permit,
                _counted: metrics.connection(Transport::Grpc),
            };
            Some((Ok(conn), (listener, permits, metrics, shutdown)))
        },
    )
}
