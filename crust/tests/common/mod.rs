//! Helpers shared by the facade's integration tests.
#![allow(dead_code, unreachable_pub)]

use std::time::Duration;

use crust::{Event, Events, Service, ServiceConfig};

/// Safety net for every wait: generous, never a performance assertion.
pub const SAFETY_NET: Duration = Duration::from_secs(60);

pub fn init_tracing() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
}

/// A listening loopback node.
pub async fn node(config: ServiceConfig) -> (Service, Events) {
    let (service, events) = Service::new(config).expect("service");
    service.start_listening().await.expect("listen");
    (service, events)
}

/// Waits for the first event matching `pred`, skipping others; panics after the safety net.
pub async fn wait_for<F>(events: &mut Events, what: &str, mut pred: F) -> Event
where
    F: FnMut(&Event) -> bool,
{
    let found = tokio::time::timeout(SAFETY_NET, async {
        while let Some(event) = events.recv().await {
            if pred(&event) {
                return Some(event);
            }
        }
        None
    })
    .await;
    match found {
        Ok(Some(event)) => event,
        Ok(None) => panic!("event stream ended while waiting for {what}"),
        Err(_) => panic!("no {what} within {SAFETY_NET:?}"),
    }
}
