//! # Name constraints: the X.509 rule that holds veil's CA to the intercepted hosts.
//!
//! Called by [`ca`](super::ca) only: when a CA is created, [`name_constraints_for`] turns the
//! intercepted hosts into permitted and excluded subtrees (RFC 5280 §4.2.1.10); when one is
//! loaded, [`outside`] lists the intercepted hosts its constraints would make apps reject, and
//! [`constraint_gap`] says what a thief of `ca.key` could still sign. Pure functions on
//! `rcgen` values: no file, no key, no logging.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use rcgen::{CidrSubnet, GeneralSubtree, NameConstraints};

use crate::config::HostPattern;

/// The name constraints of a new CA for `hosts` (RFC 5280 §4.2.1.10).
///
/// Permitted: a DNS name covers itself and its subdomains, so `*.openai.azure.com` becomes
/// `openai.azure.com`; an IP address becomes a single-address subnet.
///
/// IP addresses are constrained too, always: RFC 5280 leaves a name type without a permitted
/// subtree unconstrained, so a CA with DNS subtrees only would still sign `IP:10.0.0.1` for a
/// thief of `ca.key` (veil#10). An IP family with no intercepted address gets an excluded
/// subtree covering all of it (`0.0.0.0/0`, `::/0`); a family with intercepted addresses is
/// already narrowed by their permitted subnets.
pub(super) fn name_constraints_for(hosts: &[HostPattern]) -> NameConstraints {
    let mut permitted: Vec<GeneralSubtree> = Vec::new();
    let (mut v4, mut v6) = (false, false);
    for h in hosts {
        let t = match h.host.parse::<IpAddr>() {
            Ok(ip) => {
                v4 |= ip.is_ipv4();
                v6 |= ip.is_ipv6();
                GeneralSubtree::IpAddress(CidrSubnet::from_addr_prefix(
                    ip,
                    if ip.is_ipv4() { 32 } else { 128 },
                ))
            }
            Err(_) => GeneralSubtree::DnsName(h.host.clone()),
        };
        if !permitted.contains(&t) {
            permitted.push(t);
        }
    }
    let mut excluded = Vec::new();
    if !v4 {
        excluded.push(GeneralSubtree::IpAddress(CidrSubnet::from_addr_prefix(
            IpAddr::V4(Ipv4Addr::UNSPECIFIED),
            0,
        )));
    }
    if !v6 {
        excluded.push(GeneralSubtree::IpAddress(CidrSubnet::from_addr_prefix(
            IpAddr::V6(Ipv6Addr::UNSPECIFIED),
            0,
        )));
    }
    NameConstraints {
        permitted_subtrees: permitted,
        excluded_subtrees: excluded,
    }
}

/// What a thief of `ca.key` could still sign that apps trusting this CA would accept, when
/// the CA's name constraints leave IP addresses (or everything) open; `None` when both DNS
/// names and IP addresses are constrained.
pub(super) fn constraint_gap(nc: Option<&NameConstraints>) -> Option<&'static str> {
    let Some(nc) = nc else {
        return Some("it has no name constraints: a stolen ca.key can impersonate any site");
    };
    let ip = |t: &GeneralSubtree| matches!(t, GeneralSubtree::IpAddress(_));
    if nc.permitted_subtrees.iter().any(ip) || nc.excluded_subtrees.iter().any(ip) {
        return None;
    }
    Some(
        "its name constraints cover DNS names only: a stolen ca.key can still sign certificates \
         for any IP address",
    )
}

/// Hosts of `hosts` that name constraints `nc` do not allow a leaf for.
pub(super) fn outside(nc: &NameConstraints, hosts: &[HostPattern]) -> Vec<String> {
    let dns_in = |d: &str, host: &str| {
        let d = d.trim_start_matches('.').to_ascii_lowercase();
        d.is_empty() || host == d || host.ends_with(&format!(".{d}"))
    };
    let ip_in = |c: &CidrSubnet, ip: std::net::IpAddr| match (c, ip) {
        (CidrSubnet::V4(net, mask), std::net::IpAddr::V4(a)) => {
            (0..4).all(|i| a.octets()[i] & mask[i] == net[i] & mask[i])
        }
        (CidrSubnet::V6(net, mask), std::net::IpAddr::V6(a)) => {
            (0..16).all(|i| a.octets()[i] & mask[i] == net[i] & mask[i])
        }
        _ => false,
    };
    // Whether subtree `t` matches `host`; `None` when it constrains another name type.
    let judge = |t: &GeneralSubtree, host: &str, ip: Option<std::net::IpAddr>| match (t, ip) {
        (GeneralSubtree::DnsName(d), None) => Some(dns_in(d, host)),
        (GeneralSubtree::IpAddress(c), Some(ip)) => Some(ip_in(c, ip)),
        _ => None,
    };
    // A name type with no permitted subtree is unconstrained; an excluded one always loses.
    let allowed = |host: &str| {
        let ip = host.parse().ok();
        let permitted: Vec<bool> = nc
            .permitted_subtrees
            .iter()
            .filter_map(|t| judge(t, host, ip))
            .collect();
        (permitted.is_empty() || permitted.contains(&true))
            && !nc
                .excluded_subtrees
                .iter()
                .any(|t| judge(t, host, ip) == Some(true))
    };
    hosts
        .iter()
        .filter(|h| !allowed(&h.host))
        .map(|h| {
            if h.wildcard {
                format!("*.{}", h.host)
            } else {
                h.host.clone()
            }
        })
        .collect()
}
