//! Which ports the sidecar captures and how it proxies them: inbound ports,
//! skipped ones, TCP and HTTP/2 ports, outbound capture and its exceptions.
//! Every list goes through the contract's port parser; names of the pod's
//! container ports are resolved to their numbers.

use ipnet::IpNet;
use kube_mtls_contract::init::{CIDRS_FIX, parse_cidrs};
use kube_mtls_contract::names::SIDECAR_PORTS;
use kube_mtls_contract::ports::{self, InboundPorts, InboundPortsError, PortSet};

use super::Input;
use crate::annotations::{PREFIX, Rejection, annotation, declared_ports, named_ports, reject};

/// What to write instead of a bad port annotation.
const PORTS_FIX: &str =
    "list port numbers (1-65535) or names of the pod's container ports, separated by commas";

/// The resolved port settings.
#[derive(Debug, Clone, PartialEq)]
pub struct Ports {
    pub inbound: InboundPorts,
    pub skip_inbound: PortSet,
    pub tcp: PortSet,
    pub h2: PortSet,
    pub outbound: PortSet,
    pub skip_outbound_cidrs: Vec<IpNet>,
}

/// A port annotation naming a port that is neither a number nor a container port's name.
fn not_a_port(name: &str, item: &str) -> Rejection {
    reject(
        name,
        format!("{item:?} is neither a port number nor the name of a container port"),
        PORTS_FIX,
    )
}

/// A port-list annotation, `None` when the pod does not set it.
fn annotated(input: &Input<'_>, name: &str) -> Result<Option<PortSet>, Rejection> {
    let Some(value) = annotation(&input.ann, name) else {
        return Ok(None);
    };
    let named = named_ports(input.pod);
    ports::parse_ports_with(value, |item| {
        named.iter().find(|(n, _)| n == item).map(|(_, p)| *p)
    })
    .map(Some)
    .map_err(|e| not_a_port(name, &e.item))
}

fn check_not_sidecar_ports(name: &str, ports: &PortSet) -> Result<(), Rejection> {
    match SIDECAR_PORTS.iter().find(|own| ports.contains(own)) {
        Some(own) => Err(reject(
            name,
            format!(
                "port {own} is one of the sidecar's own ports (15006 inbound, 15001 outbound, 15020 admin)"
            ),
            "move the app off ports 15001, 15006 and 15020, or leave this port out",
        )),
        None => Ok(()),
    }
}

/// A port list from the pod's MtlsProfile, checked like the annotation that
/// overrides it: the CRD allows any u16, but the init container refuses port
/// 0 (and the sidecar's own ports where `no_sidecar_ports`).
fn from_profile(
    input: &Input<'_>,
    field: &str,
    value: &Option<Vec<u16>>,
    no_sidecar_ports: bool,
) -> Result<Option<PortSet>, Rejection> {
    let Some(value) = value else {
        return Ok(None);
    };
    let name = input.profile_name.as_deref().unwrap_or_default();
    let set: PortSet = value.iter().copied().collect();
    let bad = |problem: String, fix: &str| Rejection {
        subject: format!("MtlsProfile {name} field {field}"),
        problem,
        fix: format!(
            "{fix} in {field} (kubectl edit mtlsprofile {name} -n {})",
            input.namespace
        ),
    };
    if set.contains(&0) {
        return Err(bad(
            "port 0 is not a port".into(),
            "list port numbers from 1 to 65535",
        ));
    }
    if let Some(own) = SIDECAR_PORTS.iter().find(|own| set.contains(own))
        && no_sidecar_ports
    {
        return Err(bad(
            format!(
                "port {own} is one of the sidecar's own ports (15006 inbound, 15001 outbound, 15020 admin)"
            ),
            "leave out ports 15001, 15006 and 15020",
        ));
    }
    Ok(Some(set))
}

/// The annotation, else the profile's field, else nothing.
fn list(
    input: &Input<'_>,
    name: &str,
    field: &str,
    profile: &Option<Vec<u16>>,
    no_sidecar_ports: bool,
) -> Result<PortSet, Rejection> {
    match annotated(input, name)? {
        Some(p) => Ok(p),
        None => Ok(from_profile(input, field, profile, no_sidecar_ports)?.unwrap_or_default()),
    }
}

/// `inbound-ports`: the annotation, else the profile, else the pod's
/// declared ports, else all (with a warning).
fn inbound(input: &Input<'_>, warnings: &mut Vec<String>) -> Result<InboundPorts, Rejection> {
    if let Some(value) = annotation(&input.ann, "inbound-ports") {
        let named = named_ports(input.pod);
        let inbound = InboundPorts::parse_with(value, |item| {
            named.iter().find(|(n, _)| n == item).map(|(_, p)| *p)
        })
        .map_err(|e| match e {
            InboundPortsError::Empty => reject(
                "inbound-ports",
                "no ports given",
                "list ports, or `*` for all",
            ),
            InboundPortsError::Port(e) => not_a_port("inbound-ports", &e.item),
        })?;
        if let InboundPorts::Only(p) = &inbound {
            check_not_sidecar_ports("inbound-ports", p)?;
        }
        return Ok(inbound);
    }
    if let Some(p) = from_profile(input, "inboundPorts", &input.profile.inbound_ports, true)?
        && !p.is_empty()
    {
        return Ok(InboundPorts::Only(p));
    }
    let declared = declared_ports(input.pod);
    if declared.is_empty() {
        warnings.push(format!(
            "kube-mtls: the pod declares no container ports, so all inbound TCP ports are captured; set {PREFIX}inbound-ports to choose"
        ));
        return Ok(InboundPorts::All);
    }
    if let Some(own) = SIDECAR_PORTS.iter().find(|own| declared.contains(own)) {
        return Err(Rejection {
            subject: format!("container port {own}"),
            problem:
                "it is one of the sidecar's own ports (15006 inbound, 15001 outbound, 15020 admin)"
                    .into(),
            fix: "move the app to another port".into(),
        });
    }
    Ok(InboundPorts::Only(declared))
}

/// `skip-outbound-cidrs`, else the profile's, through the init's own parser.
fn skip_outbound_cidrs(input: &Input<'_>) -> Result<Vec<IpNet>, Rejection> {
    let cidrs = annotation(&input.ann, "skip-outbound-cidrs")
        .map(str::to_owned)
        .or_else(|| {
            input
                .profile
                .skip_outbound_cidrs
                .as_ref()
                .map(|c| c.join(","))
        })
        .unwrap_or_default();
    parse_cidrs(&cidrs).map_err(|problem| reject("skip-outbound-cidrs", problem, CIDRS_FIX))
}

/// Resolves every port setting of the pod.
pub fn resolve(input: &Input<'_>, warnings: &mut Vec<String>) -> Result<Ports, Rejection> {
    let p = &input.profile;
    let inbound = inbound(input, warnings)?;
    // The annotation's checks cover the profile's list too (none for the
    // sidecar's ports in skip-inbound-ports, which the init accepts).
    let skip_inbound = list(
        input,
        "skip-inbound-ports",
        "skipInboundPorts",
        &p.skip_inbound_ports,
        false,
    )?;
    let tcp = list(input, "tcp-ports", "tcpPorts", &p.tcp_ports, true)?;
    let h2 = annotated(input, "h2-ports")?.unwrap_or_default();
    check_not_sidecar_ports("tcp-ports", &tcp)?;
    check_not_sidecar_ports("h2-ports", &h2)?;
    if let Some(port) = tcp.intersection(&h2).next() {
        return Err(reject(
            "h2-ports",
            format!("port {port} is also in {PREFIX}tcp-ports"),
            "a port is TCP or HTTP/2, not both",
        ));
    }
    let outbound = list(
        input,
        "outbound-ports",
        "outboundPorts",
        &p.outbound_ports,
        true,
    )?;
    check_not_sidecar_ports("outbound-ports", &outbound)?;
    Ok(Ports {
        inbound,
        skip_inbound,
        tcp,
        h2,
        outbound,
        skip_outbound_cidrs: skip_outbound_cidrs(input)?,
    })
}
