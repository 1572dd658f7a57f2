//! VXI-11 under the link actor: [`crate::vxi11::Vxi11Client`] behind the [`MessageIo`] seam.
//!
//! The request timeout becomes the instrument's I/O timeout on every call, so a silent
//! instrument answers with error 15 (reported as a link timeout) before the actor's own bound.

use std::time::Duration;

use futures::future::BoxFuture;

use super::message::{MessageError, MessageIo, ReadSpec};
use crate::vxi11::rpc::RpcFailure;
use crate::vxi11::{Vxi11Client, Vxi11Error, Vxi11Options};

pub struct Vxi11Link {
    client: Vxi11Client,
    timeout: Duration,
}

/// Connect: portmapper, core channel, create_link. `Err((message, permanent))`.
pub async fn open(
    host: &str,
    portmap_port: u16,
    device: &str,
    timeout: Duration,
) -> Result<Vxi11Link, (String, bool)> {
    let mut opts = Vxi11Options::new(host, device);
    opts.portmap_port = portmap_port;
    opts.io_timeout = timeout;
    match Vxi11Client::connect(opts).await {
        Ok(client) => Ok(Vxi11Link { client, timeout }),
        Err(e) => {
            // A server that is not VXI-11 will not become one by retrying.
            let permanent = matches!(
                e,
                Vxi11Error::Rpc {
                    failure: RpcFailure::ProgUnavail | RpcFailure::ProgMismatch { .. },
                    ..
                }
            );
            Err((e.to_string(), permanent))
        }
    }
}

fn map(e: Vxi11Error, timeout: Duration) -> MessageError {
    match e {
        Vxi11Error::Timeout { after, .. } => MessageError::Timeout(after),
        Vxi11Error::Device { code: 15, .. } => MessageError::Timeout(timeout),
        Vxi11Error::Closed { .. } => MessageError::Closed,
        Vxi11Error::ReplyTooLong { max, .. } => MessageError::TooLong { max },
        Vxi11Error::Io { ref source, .. } => {
            MessageError::Io(std::io::Error::new(source.kind(), e.to_string()))
        }
        other => MessageError::Protocol(other.to_string()),
    }
}

impl MessageIo for Vxi11Link {
    fn write_msg<'a>(&'a mut self, msg: &'a [u8]) -> BoxFuture<'a, Result<(), MessageError>> {
        Box::pin(async move {
            self.client.set_io_timeout(self.timeout);
            self.client
                .write(msg)
                .await
                .map_err(|e| map(e, self.timeout))
        })
    }

    fn read_msg<'a>(
        &'a mut self,
        spec: ReadSpec<'a>,
    ) -> BoxFuture<'a, Result<Vec<u8>, MessageError>> {
        Box::pin(async move {
            self.client.set_io_timeout(spec.timeout);
            self.client.set_max_reply(spec.max);
            self.client.read().await.map_err(|e| map(e, spec.timeout))
        })
    }

    fn clear(&mut self) -> BoxFuture<'_, Result<(), MessageError>> {
        Box::pin(async move {
            self.client.set_io_timeout(self.timeout);
            self.client.clear().await.map_err(|e| map(e, self.timeout))
        })
    }

    fn peer_info(&self) -> Option<String> {
        Some(format!(
            "vxi-11 link {} at {} (maxRecvSize {})",
            self.client.link_id(),
            self.client.endpoint(),
            self.client.max_recv_size()
        ))
    }
}
