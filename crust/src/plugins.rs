//! The plug-ins [`ServiceConfig`](crate::ServiceConfig) can build for you: the bootstrap
//! handler (`crust-bootstrap`) and LAN beacons (`crust-beacon`). They plug in through the
//! same public interface as any other source ([`Service::add_discovery`]); this module is
//! only the convenience that builds them, and the only place in the facade that names them.

use crate::Service;

/// What the configured plug-ins left behind that the service can be asked about.
#[derive(Debug, Default)]
pub(crate) struct Started {
    beacon: Option<crust_beacon::BeaconHandle>,
}

impl Started {
    /// The UDP port of the LAN beacon, when one runs.
    pub(crate) fn beacon_acceptor_port(&self) -> Option<u16> {
        self.beacon.as_ref().map(|b| b.beacon_acceptor_port())
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
