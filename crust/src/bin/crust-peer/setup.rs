//! From the command line to a [`ServiceConfig`]: listening, relays, tracer mode and key log,
//! the identity file, beacons and bootstrap.

use std::net::{IpAddr, Ipv4Addr};
use std::path::Path;

use anyhow::Context as _;
use crust::{Identity, ServiceConfig};

use crate::Args;
use crate::printer::Printer;

fn relay_config(args: &Args) -> crust::RelayConfig {
    if args.no_relay {
        return crust::RelayConfig::disabled();
    }
    let defaults = crust::RelayConfig::default();
    crust::RelayConfig::default()
        .with_serve(!args.no_relay_service)
        .with_limits(
            args.relay_max_circuits,
            (args.relay_max_circuits / 8).max(1),
            defaults.max_bytes_per_circuit,
            defaults.max_duration,
        )
}

pub(crate) fn config_from(args: &Args, printer: Printer) -> anyhow::Result<ServiceConfig> {
    let default_ip = if args.loopback {
        IpAddr::V4(Ipv4Addr::LOCALHOST)
    } else {
        IpAddr::V4(Ipv4Addr::UNSPECIFIED)
    };
    // Dual-stack by default; an explicit address or --loopback means that address only,
    // unless an IPv6 one is named too.
    let default_ipv6 = (args.listen_ip.is_none() && !args.loopback)
        .then_some(IpAddr::V6(std::net::Ipv6Addr::UNSPECIFIED));
    let listen_ipv6 = if args.no_ipv6 {
        None
    } else {
        args.listen_ipv6.or(default_ipv6)
    };
    let mut config = ServiceConfig::default()
        .with_listen_ip(args.listen_ip.unwrap_or(default_ip))
        .with_listen_ipv6(listen_ipv6)
        .with_ports(args.tcp_port, args.rudp_port)
        .with_tcp(!args.no_tcp)
        .with_rudp(!args.no_rudp)
        .with_loopback_endpoints(args.loopback)
        .with_min_observer_networks(args.min_observer_networks)
        .with_hole_punching(!args.no_hole_punching)
        .with_relay(relay_config(args))
        .with_gossip(if args.no_gossip {
            crust::GossipConfig::disabled()
        } else {
            crust::GossipConfig::default()
                .with_interval(std::time::Duration::from_secs(args.gossip_interval))
        });
    if args.tracer {
        printer.warning(
            "tracer mode: TCP frames travel unencrypted (authenticated, not secret); only tracer peers can connect over TCP",
        );
        config = config
            .with_tracer(true)
            .with_tracer_allowed_in_release(args.allow_tracer_in_release);
    }
    if let Some(path) = &args.key_log {
        printer.warning(format!(
            "key log: the TLS secrets of every session are written to {}; anyone holding it and a capture can read the traffic",
            path.display()
        ));
        config = config.with_key_log_file(path);
    }
    if !args.loopback && !args.no_port_mapping {
        config = config.with_port_mapping(crust::PortMapConfig::default());
    }
    if let Some(path) = &args.identity {
        config = config.with_identity(load_identity(path, printer)?);
    }
    if args.beacon && !args.no_beacon {
        let mut beacon = crust::BeaconConfig::default().with_port(args.beacon_port);
        if args.loopback {
            // Loopback has no broadcast flag, but Linux delivers its broadcast address to
            // every socket sharing the port.
            beacon =
                beacon.with_broadcast_addrs(vec![IpAddr::V4(Ipv4Addr::new(127, 255, 255, 255))]);
        }
        config = config.with_beacon(beacon);
    }
    if let Some(path) = &args.config {
        // The default config may be absent; one named on the command line must be there.
        if let Err(e) = std::fs::metadata(path) {
            anyhow::bail!("bootstrap config {}: {e}", path.display());
        }
    }
    if !args.no_bootstrap {
        let config_path = args
            .config
            .clone()
            .or_else(crust::bootstrap::default_config_path);
        let mut bootstrap = match &config_path {
            Some(path) => crust::BootstrapConfig::load(path)
                .with_context(|| format!("bootstrap config {}", path.display()))?,
            None => crust::BootstrapConfig::default(),
        };
        if let Some(cache) = &args.cache {
            bootstrap = bootstrap.with_cache_path(cache);
        }
        // Explicit port flags win over the config file's.
        let (tcp_port, rudp_port) = (config.tcp_port, config.rudp_port);
        config = config.with_bootstrap(bootstrap);
        if args.tcp_port != 0 {
            config.tcp_port = tcp_port;
        }
        if args.rudp_port != 0 {
            config.rudp_port = rudp_port;
        }
    }
    Ok(config)
}

/// Loads the identity at `path`, or generates one and saves it there if there is no file.
///
/// Unlike [`Identity::load_or_generate`], a dangling symlink is refused (writing a new key
/// would replace the link, and the `PeerId` would change silently), a key others may read
/// gets a warning, and each error names its cause once.
fn load_identity(path: &Path, printer: Printer) -> anyhow::Result<Identity> {
    let shown = path.display();
    if let Ok(link) = std::fs::symlink_metadata(path) {
        if link.file_type().is_symlink() {
            if let Err(e) = std::fs::metadata(path) {
                let target = std::fs::read_link(path)
                    .map(|t| t.display().to_string())
                    .unwrap_or_else(|_| "?".to_string());
                anyhow::bail!(
                    "identity file {shown} is a symlink to {target}, which cannot be read ({e}); \
                     refusing to replace it with a new key (restore the target or remove the link)"
                );
            }
        }
    }
    match std::fs::read_to_string(path) {
        Ok(pem) => {
            warn_if_readable_by_others(path, printer);
            Identity::from_pem(&pem).with_context(|| format!("identity file {shown}"))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let identity = Identity::generate().context("generating an identity")?;
            // The error names the path already.
            identity.save(path).context("saving the new identity")?;
            Ok(identity)
        }
        Err(e) => Err(e).with_context(|| format!("cannot read identity file {shown}")),
    }
}

/// Warns when the key file at `path` may be read or written by others than its owner.
fn warn_if_readable_by_others(path: &Path, printer: Printer) {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        if let Ok(meta) = std::fs::metadata(path) {
            let mode = meta.permissions().mode() & 0o777;
            if mode & 0o077 != 0 {
                printer.warning(format!(
                    "identity file {} is accessible by others (mode {mode:o}); \
                     its private key should be owner-only (chmod 600)",
                    path.display()
                ));
            }
        }
    }
    #[cfg(not(unix))]
    let _ = (path, printer);
}
