//! HiSLIP under the link actor: [`crate::hislip::HislipClient`] behind the [`MessageIo`] seam.

use std::time::Duration;

use futures::future::BoxFuture;

use super::message::{MessageError, MessageIo, ReadSpec};
use crate::hislip::{HislipClient, HislipError, HislipOptions};

pub struct HislipLink {
    client: HislipClient,
    timeout: Duration,
}

/// Open both channels of a session. `Err((message, permanent))`.
pub async fn open(
    host: &str,
    port: u16,
    device: &str,
    timeout: Duration,
) -> Result<HislipLink, (String, bool)> {
    let mut opts = HislipOptions::new(host, port, device);
    opts.io_timeout = timeout;
    match HislipClient::connect(opts).await {
        Ok(client) => Ok(HislipLink { client, timeout }),
        Err(e) => {
            // Refused at Initialize (an unknown sub-address): retrying soon will not help.
            let permanent = matches!(
                e,
                HislipError::Server {
                    fatal: true,
                    code: 3,
                    ..
                }
            );
            Err((e.to_string(), permanent))
        }
    }
}

fn map(e: HislipError) -> MessageError {
    match e {
        HislipError::Timeout { after, .. } => MessageError::Timeout(after),
        HislipError::Closed { .. } => MessageError::Closed,
        HislipError::ReplyTooLong { max, .. } => MessageError::TooLong { max },
        HislipError::Io { ref source, .. } => {
            MessageError::Io(std::io::Error::new(source.kind(), e.to_string()))
        }
        other => MessageError::Protocol(other.to_string()),
    }
}

impl MessageIo for HislipLink {
    fn write_msg<'a>(&'a mut self, msg: &'a [u8]) -> BoxFuture<'a, Result<(), MessageError>> {
        Box::pin(async move {
            self.client.set_io_timeout(self.timeout);
            self.client.write(msg).await.map_err(map)
        })
    }

    fn read_msg<'a>(
        &'a mut self,
        spec: ReadSpec<'a>,
    ) -> BoxFuture<'a, Result<Vec<u8>, MessageError>> {
        Box::pin(async move {
            self.client.set_io_timeout(spec.timeout);
            self.client.set_max_reply(spec.max);
            self.client.read().await.map_err(map)
        })
    }

    fn clear(&mut self) -> BoxFuture<'_, Result<(), MessageError>> {
        Box::pin(async move {
            self.client.set_io_timeout(self.timeout);
            self.client.clear().await.map_err(map)
        })
    }

    fn peer_info(&self) -> Option<String> {
        Some(format!(
            "hislip session {} at {}",
            self.client.session_id(),
            self.client.endpoint()
        ))
    }
}
