//! Listeners: binding every transport and the accept loops.

use std::net::SocketAddr;
use std::sync::Arc;

use crust_core::{Endpoint, Protocol};
use tracing::Instrument;

use crate::conn_task::Cause;
use crate::node::Node;
use crate::{Error, Event, Result};

impl Node {
    /// Listens on every transport (all or nothing) and starts accepting.
    pub(crate) async fn start_listening(self: &Arc<Self>) -> Result<Vec<Endpoint>> {
        {
            let mut listening = self.listening();
            if listening.started {
                return Err(Error::Listen("already listening".into()));
            }
            listening.started = true;
        }
        // Listen on every transport first, so that a failure leaves nothing running.
        let mut listeners = Vec::with_capacity(self.transports.len() * 2);
        for transport in &self.transports {
            let port = match transport.protocol() {
                Protocol::Tcp => self.config.tcp_port,
                Protocol::Rudp => self.config.rudp_port,
                _ => 0,
            };
            let addr = SocketAddr::new(self.config.listen_ip, port);
            match transport.listen(addr).await {
                Ok(listener) => listeners.push(listener),
                Err(e) => {
                    drop(listeners);
                    self.listening().started = false;
                    return Err(e.into());
                }
            }
        }
        // The second address family is best effort: a host without IPv6 still runs.
        if let Some(ip) = self
            .config
            .listen_ipv6
            .filter(|ip| *ip != self.config.listen_ip)
        {
            for transport in &self.transports {
                let port = match transport.protocol() {
                    Protocol::Tcp => self.config.tcp_port,
                    Protocol::Rudp => self.config.rudp_port,
                    _ => 0,
                };
                match transport.listen(SocketAddr::new(ip, port)).await {
                    Ok(listener) => listeners.push(listener),
                    Err(e) => {
                        tracing::warn!(%ip, protocol = %transport.protocol(), error = %e, "cannot listen on the second address (no IPv6 here?); continuing without it");
                    }
                }
            }
        }
        let mut bound = Vec::with_capacity(listeners.len());
        for listener in listeners {
            let endpoint = listener.local_endpoint();
            bound.push(endpoint);
            self.listening().endpoints.push(endpoint);
            let node = self.clone();
            self.tasks.spawn(
                async move { node.accept_loop(listener).await }
                    .instrument(tracing::info_span!("listener", %endpoint)),
            );
            tracing::info!(%endpoint, peer = %self.peer_id(), "listening");
            self.emit_now(Event::ListenerStarted { endpoint });
        }
        // Probe datagrams (NAT filtering test) come from the first datagram transport.
        if let Some(probes) = self.transports.iter().find_map(|t| t.take_probe_receiver()) {
            self.start_probe_receiver(probes);
        }
        let ports = bound
            .iter()
            .map(|ep| (ep.protocol(), ep.addr().port()))
            .collect();
        let local_ips = crate::endpoints::interface_addresses();
        {
            let mut reachability = self.reachability();
            reachability.classifier.set_listen_ports(ports);
            reachability.classifier.set_local_ips(local_ips);
        }
        Ok(bound)
    }

    async fn accept_loop(self: Arc<Self>, mut listener: Box<dyn crust_core::Listener>) {
        loop {
            let accepted = tokio::select! {
                _ = self.shutdown.cancelled() => return,
                accepted = listener.accept() => accepted,
            };
            match accepted {
                Ok(conn) => {
                    // Registering is quick (it waits only if the application's event
                    // queue is full, which then slows accepting down: backpressure).
                    let peer = conn.peer_id();
                    if let Err(e) = self.register(conn, Cause::Peer).await {
                        tracing::debug!(%peer, error = %e, "incoming connection refused");
                    }
                }
                Err(e) => {
                    tracing::warn!(error = %e, "listener stopped");
                    return;
                }
            }
        }
    }
}
