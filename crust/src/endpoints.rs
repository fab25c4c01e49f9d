//! Which endpoints to advertise: the bound listener addresses, with unspecified addresses
//! (`0.0.0.0`, `::`) expanded to the machine's interface addresses.

use std::net::{IpAddr, SocketAddr};

use crust_core::Endpoint;

/// Expands bound listener endpoints into reachable ones.
///
/// Never yields port 0 or an unspecified address; loopback addresses only when
/// `include_loopback` is set. `interfaces` is the machine's interface address list.
pub(crate) fn reachable_endpoints(
    bound: &[Endpoint],
    interfaces: &[IpAddr],
    include_loopback: bool,
) -> Vec<Endpoint> {
    let mut out = Vec::new();
    for ep in bound {
        let addr = ep.addr();
        if addr.port() == 0 {
            continue;
        }
        let candidates: Vec<IpAddr> = if addr.ip().is_unspecified() {
            interfaces
                .iter()
                .copied()
                .filter(|ip| ip.is_ipv4() == addr.is_ipv4())
                .collect()
        } else {
            vec![addr.ip()]
        };
        for ip in candidates {
            if ip.is_unspecified() || (ip.is_loopback() && !include_loopback) {
                continue;
            }
            if let IpAddr::V6(v6) = ip {
                // Link-local IPv6 needs a scope id that an endpoint string cannot carry.
                if v6.segments()[0] & 0xffc0 == 0xfe80 {
                    continue;
                }
            }
            let ep = Endpoint::new(ep.protocol(), SocketAddr::new(ip, addr.port()));
            if !out.contains(&ep) {
                out.push(ep);
            }
        }
    }
    out
}

/// The machine's interface addresses (empty if they cannot be listed).
pub(crate) fn interface_addresses() -> Vec<IpAddr> {
    match if_addrs::get_if_addrs() {
        Ok(ifaces) => ifaces.into_iter().map(|i| i.ip()).collect(),
        Err(e) => {
            tracing::warn!(error = %e, "cannot list network interfaces");
            Vec::new()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ep(s: &str) -> Endpoint {
        s.parse().expect("endpoint")
    }

    fn ips(list: &[&str]) -> Vec<IpAddr> {
        list.iter().map(|s| s.parse().expect("ip")).collect()
    }

    #[test]
    fn unspecified_expands_to_interfaces_without_loopback() {
        let bound = [ep("tcp://0.0.0.0:4000"), ep("rudp://0.0.0.0:5000")];
        let ifaces = ips(&[
            "127.0.0.1",
            "192.168.1.20",
            "10.0.0.5",
            "::1",
            "fe80::1",
            "2001:db8::7",
        ]);
        let out = reachable_endpoints(&bound, &ifaces, false);
        assert_eq!(
            out,
            vec![
                ep("tcp://192.168.1.20:4000"),
                ep("tcp://10.0.0.5:4000"),
                ep("rudp://192.168.1.20:5000"),
                ep("rudp://10.0.0.5:5000"),
            ]
        );
    }

    #[test]
    fn loopback_only_when_asked() {
        let bound = [ep("tcp://127.0.0.1:4000")];
        assert!(reachable_endpoints(&bound, &[], false).is_empty());
        assert_eq!(
            reachable_endpoints(&bound, &[], true),
            vec![ep("tcp://127.0.0.1:4000")]
        );
    }

    #[test]
    fn never_port_zero_or_unspecified() {
        let bound = [ep("tcp://0.0.0.0:0"), ep("tcp://[::]:7000")];
        let out = reachable_endpoints(&bound, &ips(&["0.0.0.0", "::", "2001:db8::1"]), true);
        assert_eq!(out, vec![ep("tcp://[2001:db8::1]:7000")]);
    }
}
