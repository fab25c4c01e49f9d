//! A QUIC endpoint of a [`RudpTransport`](crate::RudpTransport) and its listening state.

use std::io;
use std::sync::{Arc, Mutex, MutexGuard};

use crust_core::{Error, Result};
use tokio::task::JoinHandle;

use crate::probe::ProbeSocket;

/// An endpoint and whether (and how) it accepts connections.
#[derive(Clone)]
pub(crate) struct Slot {
    pub(crate) endpoint: quinn::Endpoint,
    /// The probe-aware socket under `endpoint`, for the main slot that [`listen`] bound
    /// (hole punches send their probes through it).
    ///
    /// [`listen`]: crust_core::Transport::listen
    pub(crate) probe_socket: Option<Arc<ProbeSocket>>,
    state: Arc<Mutex<SlotState>>,
}

#[derive(Default)]
pub(crate) struct SlotState {
    pub(crate) listening: bool,
    /// The transport dials from this endpoint after its listener is gone: keep refusing
    /// connection attempts (a prompt `CONNECTION_REFUSED`) instead of letting dialers time out.
    keep_refusing: bool,
    /// The task refusing connection attempts while nobody listens.
    refuser: Option<JoinHandle<()>>,
}

impl Slot {
    pub(crate) fn new(endpoint: quinn::Endpoint, listening: bool, keep_refusing: bool) -> Self {
        Slot {
            endpoint,
            probe_socket: None,
            state: Arc::new(Mutex::new(SlotState {
                listening,
                keep_refusing,
                refuser: None,
            })),
        }
    }

    pub(crate) fn state(&self) -> MutexGuard<'_, SlotState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Marks the slot as listening; fails if it already is.
    pub(crate) fn start_listening(&self, server_config: &quinn::ServerConfig) -> Result<()> {
        let mut state = self.state();
        if state.listening {
            return Err(Error::Io(io::Error::new(
                io::ErrorKind::AddrInUse,
                "already listening on this socket",
            )));
        }
        state.listening = true;
        if let Some(refuser) = state.refuser.take() {
            refuser.abort();
        }
        self.endpoint.set_server_config(Some(server_config.clone()));
        Ok(())
    }

    /// Called when the slot's listener is dropped.
    pub(crate) fn stop_listening(&self) {
        let mut state = self.state();
        state.listening = false;
        let runtime = tokio::runtime::Handle::try_current();
        match runtime {
            Ok(runtime) if state.keep_refusing => {
                let endpoint = self.endpoint.clone();
                state.refuser = Some(runtime.spawn(async move {
                    while let Some(incoming) = endpoint.accept().await {
                        tracing::debug!(remote = %incoming.remote_address(), "not listening; refusing connection");
                        incoming.refuse();
                    }
                }));
            }
            _ => self.endpoint.set_server_config(None),
        }
    }

    /// Called when the transport is dropped: stop refusing, so the endpoint can go away.
    pub(crate) fn retire(&self) {
        let mut state = self.state();
        state.keep_refusing = false;
        if let Some(refuser) = state.refuser.take() {
            refuser.abort();
        }
        if !state.listening {
            self.endpoint.set_server_config(None);
        }
    }
}
