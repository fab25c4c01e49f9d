//! The plug-ins [`ServiceConfig`](crate::ServiceConfig) can build for you: the bootstrap
//! handler (`crust-bootstrap`), LAN beacons (`crust-beacon`) and port mapping
//! (`crust-nat`). They plug in through the same public interfaces as anyone's
//! ([`Service::add_discovery`], [`Service::set_mapped_endpoints`]); this module is only the
//! convenience that builds them, and the only place in the facade that names them.

use std::sync::Arc;

use crust_core::{Endpoint, Protocol};
use crust_nat::{MappingRequest, PortMapEvent, PortMapper};

use crate::node::Node;
use crate::{Event, Service};

/// What the configured plug-ins left behind that the service can be asked about.
#[derive(Debug, Default)]
pub(crate) struct Started {
    beacon: Option<crust_beacon::BeaconHandle>,
    port_mapper: Option<PortMapper>,
}

impl Started {
    /// The UDP port of the LAN beacon, when one runs.
    pub(crate) fn beacon_acceptor_port(&self) -> Option<u16> {
        self.beacon.as_ref().map(|b| b.beacon_acceptor_port())
    }

    /// The port mapper, to shut it down (which removes the mappings from the gateway).
    pub(crate) fn take_port_mapper(&mut self) -> Option<PortMapper> {
        self.port_mapper.take()
    }
}

/// Starts the plug-ins the config asks for, once the service listens.
pub(crate) async fn start_configured(service: &Service) {
    let config = service.config();
    if let Some(bootstrap) = &config.bootstrap {
        let discovery = crust_bootstrap::BootstrapDiscovery::from_config(bootstrap);
        if let Some(outcome) = discovery.cache_load_outcome() {
            tracing::info!(?outcome, "bootstrap cache loaded");
        }
        service.add_discovery(Box::new(discovery));
    }
    if let Some(port_mapping) = &config.port_mapping {
        start_port_mapping(
            service.node(),
            port_mapping.clone(),
            service.listening_endpoints(),
        );
    }
    if let Some(beacon) = &config.beacon {
        let endpoints = service.our_endpoints();
        match crust_beacon::BeaconDiscovery::bind(beacon.clone(), service.peer_id(), endpoints)
            .await
        {
            Ok(discovery) => {
                service.node().plugins().beacon = Some(discovery.beacon().handle());
                service.add_discovery(Box::new(discovery));
            }
            Err(e) => {
                // Discovery is an aid, not a precondition: keep the listeners running.
                tracing::warn!(error = %e, "cannot start the LAN beacon");
            }
        }
    }
}

/// Maps our IPv4 listening ports and keeps the service told about the mappings.
fn start_port_mapping(
    node: &Arc<Node>,
    config: crust_nat::PortMapConfig,
    listening: Vec<Endpoint>,
) {
    let requests: Vec<MappingRequest> = listening
        .iter()
        .filter(|ep| ep.addr().is_ipv4() && !ep.addr().ip().is_loopback())
        .map(|ep| MappingRequest::for_endpoint(*ep))
        .collect();
    if requests.is_empty() {
        return;
    }
    let (mapper, mut events) = PortMapper::start(config, requests);
    node.plugins().port_mapper = Some(mapper);
    let node_for_task = node.clone();
    node.tasks.spawn(async move {
        let node = node_for_task;
        loop {
            let event = tokio::select! {
                _ = node.shutdown.cancelled() => return,
                event = events.recv() => event,
            };
            let Some(event) = event else { return };
            let app_event = match &event {
                PortMapEvent::Mapped(m) | PortMapEvent::Renewed(m) => Some(Event::PortMapped {
                    local: Endpoint::new(m.protocol, m.local),
                    external: m.external_endpoint(),
                    method: m.method.as_str(),
                }),
                PortMapEvent::Lost { mapping, reason } => Some(Event::PortMappingLost {
                    external: mapping.external_endpoint(),
                    reason: reason.to_string(),
                }),
                PortMapEvent::ExternalAddressChanged { old, new } => {
                    Some(Event::ExternalAddressChanged {
                        old: *old,
                        new: *new,
                    })
                }
                PortMapEvent::NoGateway => Some(Event::PortMappingUnavailable),
                other => {
                    tracing::debug!(event = ?other, "port mapping");
                    None
                }
            };
            // Renewals at the same endpoint change nothing the application sees.
            let renewed_same = matches!(&event, PortMapEvent::Renewed(_));
            let mapped: Vec<Endpoint> = node
                .plugins()
                .port_mapper
                .as_ref()
                .map(|mapper| {
                    let mut endpoints: Vec<Endpoint> = mapper
                        .mappings()
                        .iter()
                        .map(|m| m.external_endpoint())
                        .collect();
                    // TCP first, like every endpoint list.
                    endpoints.sort_by_key(|ep| ep.protocol() != Protocol::Tcp);
                    endpoints
                })
                .unwrap_or_default();
            node.set_mapped_endpoints(mapped);
            if let Some(app_event) = app_event.filter(|_| !renewed_same) {
                node.emit_now(app_event);
            }
        }
    });
}
