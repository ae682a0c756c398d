//! What a session's loop (`connection.rs`) reads from and writes to: a WebSocket, or
//! an event stream (Server-Sent Events, `events.rs`), which carries nothing from the
//! client but its going away.

use std::future::Future;

use futures_util::{SinkExt, StreamExt};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::error::Error as WsError;
use tokio_tungstenite::tungstenite::{Message, Utf8Bytes};
use tokio_tungstenite::WebSocketStream;

use super::connection::{fail, send_close};
use crate::protocol;
use crate::protocol::sse::{encode_event, EventMode};
use crate::session::{Closing, Session};

/// A client connection as the session loop sees it.
pub(super) trait Wire: Send {
    /// The client's next frame; `None` once it has gone.
    fn next(&mut self) -> impl Future<Output = Option<Result<Message, WsError>>> + Send;
    /// One of our frames, written at the next [`Wire::flush`] (or sooner).
    fn feed(&mut self, frame: Utf8Bytes) -> impl Future<Output = Result<(), WsError>> + Send;
    fn flush(&mut self) -> impl Future<Output = Result<(), WsError>> + Send;
    /// The last words `closing` calls for, then the end (best effort, bounded in time).
    fn close(&mut self, closing: &Closing) -> impl Future<Output = ()> + Send;
    /// A read that broke the protocol, answered before the connection ends.
    fn fail(&mut self, session: &Session, error: WsError) -> impl Future<Output = ()> + Send;
    /// What the wire does of its own while a command runs and nothing is read from it
    /// (a long-polling session answers its polls on time); resolves after each step.
    /// Sockets have nothing to do.
    fn idle(&mut self) -> impl Future<Output = ()> + Send {
        std::future::pending()
    }
}

impl Wire for WebSocketStream<TcpStream> {
    async fn next(&mut self) -> Option<Result<Message, WsError>> {
        StreamExt::next(self).await
    }

    async fn feed(&mut self, frame: Utf8Bytes) -> Result<(), WsError> {
        SinkExt::feed(self, Message::Text(frame)).await
    }

    async fn flush(&mut self) -> Result<(), WsError> {
        SinkExt::flush(self).await
    }

    async fn close(&mut self, closing: &Closing) {
        send_close(self, closing).await
    }

    async fn fail(&mut self, session: &Session, error: WsError) {
        fail(self, session, error).await
    }
}

/// `retry:` that keeps an `EventSource` from coming back (a year), after a disconnect
/// that says not to reconnect.
const NO_RETRY: &str = "retry: 31536000000\n\n";

/// An event stream's response body after its head: each frame one event, written
/// as it is fed (a batch at a time); the client's bytes read and ignored.
pub(super) struct EventStream {
    stream: TcpStream,
    mode: EventMode,
    out: String,
}

impl EventStream {
    pub(super) fn new(stream: TcpStream, mode: EventMode) -> Self {
        EventStream {
            stream,
            mode,
            out: String::new(),
        }
    }

    /// Bytes written as they are (the response head).
    pub(super) async fn write_raw(&mut self, bytes: &[u8]) -> Result<(), WsError> {
        self.stream.write_all(bytes).await.map_err(WsError::Io)
    }
}

impl Wire for EventStream {
    async fn next(&mut self) -> Option<Result<Message, WsError>> {
        let mut scratch = [0u8; 512];
        loop {
            match self.stream.read(&mut scratch).await {
                Ok(0) | Err(_) => return None,
                Ok(_) => {}
            }
        }
    }

    async fn feed(&mut self, frame: Utf8Bytes) -> Result<(), WsError> {
        encode_event(frame.as_str(), self.mode, &mut self.out);
        Ok(())
    }

    async fn flush(&mut self) -> Result<(), WsError> {
        if self.out.is_empty() {
            return Ok(());
        }
        let written = self.stream.write_all(self.out.as_bytes()).await;
        self.out.clear();
        // A buffer grown by one big batch is not kept for the stream's life.
        if self.out.capacity() > 64 * 1024 {
            self.out.shrink_to(4096);
        }
        written.map_err(WsError::Io)
    }

    async fn close(&mut self, closing: &Closing) {
        let _ = tokio::time::timeout(std::time::Duration::from_secs(1), async {
            if let Closing::Told(reason) = closing {
                let frame = protocol::disconnect(&reason.reason, reason.reconnect);
                encode_event(&frame, self.mode, &mut self.out);
                if !reason.reconnect {
                    self.out.push_str(NO_RETRY);
                }
                let _ = self.flush().await;
            }
            let _ = self.stream.shutdown().await;
        })
        .await;
    }

    async fn fail(&mut self, _session: &Session, _error: WsError) {}
}
