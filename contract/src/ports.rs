//! Port lists (`8080, 9090`) and the inbound-ports choice (`*` or a list):
//! the one parser every flag and annotation with ports goes through.

use std::collections::BTreeSet;
use std::fmt;
use std::str::FromStr;

/// A set of TCP ports, written comma-separated.
pub type PortSet = BTreeSet<u16>;

/// An item of a port list that is not a port.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{item:?} is not a port")]
pub struct PortError {
    /// The offending item, trimmed.
    pub item: String,
}

/// What to write instead of a bad port list.
pub const PORTS_FIX: &str = "give port numbers from 1 to 65535 separated by commas";

/// The non-empty, trimmed items of a comma-separated list.
pub fn items(value: &str) -> impl Iterator<Item = &str> {
    value.split(',').map(str::trim).filter(|s| !s.is_empty())
}

/// One port number, 1 to 65535.
pub fn parse_port(item: &str) -> Result<u16, PortError> {
    match item.trim().parse::<u16>() {
        Ok(p) if p > 0 => Ok(p),
        _ => Err(PortError {
            item: item.trim().to_owned(),
        }),
    }
}

/// A comma-separated port list; an empty string is the empty set.
pub fn parse_ports(value: &str) -> Result<PortSet, PortError> {
    parse_ports_with(value, |_| None)
}

/// As [`parse_ports`], with `named` resolving items that are not numbers
/// (e.g. a container port's name) to a port.
pub fn parse_ports_with(
    value: &str,
    named: impl Fn(&str) -> Option<u16>,
) -> Result<PortSet, PortError> {
    items(value)
        .map(|item| parse_port(item).or_else(|e| named(item).ok_or(e)))
        .collect()
}

/// Writes a port set as the flags take it: `8080,9090`.
pub fn join(ports: &PortSet) -> String {
    ports
        .iter()
        .map(u16::to_string)
        .collect::<Vec<_>>()
        .join(",")
}

/// Which inbound ports are captured.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum InboundPorts {
    /// Every inbound TCP port (`*`).
    All,
    /// Only these (never empty).
    Only(PortSet),
}

impl InboundPorts {
    /// Whether `port` is in the choice.
    pub fn contains(&self, port: u16) -> bool {
        match self {
            InboundPorts::All => true,
            InboundPorts::Only(p) => p.contains(&port),
        }
    }
}

/// Why an inbound-ports value cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InboundPortsError {
    #[error(transparent)]
    Port(#[from] PortError),
    #[error("no ports given")]
    Empty,
}

impl InboundPorts {
    /// `*`, or a non-empty port list whose names `named` resolves.
    pub fn parse_with(
        value: &str,
        named: impl Fn(&str) -> Option<u16>,
    ) -> Result<Self, InboundPortsError> {
        if value.trim() == "*" {
            return Ok(InboundPorts::All);
        }
        let ports = parse_ports_with(value, named)?;
        if ports.is_empty() {
            return Err(InboundPortsError::Empty);
        }
        Ok(InboundPorts::Only(ports))
    }
}

impl FromStr for InboundPorts {
    type Err = InboundPortsError;

    fn from_str(value: &str) -> Result<Self, Self::Err> {
        InboundPorts::parse_with(value, |_| None)
    }
}

impl fmt::Display for InboundPorts {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            InboundPorts::All => f.write_str("*"),
            InboundPorts::Only(p) => f.write_str(&join(p)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lists_names_and_star() {
        assert_eq!(parse_ports(" 80, 443 ,"), Ok(PortSet::from([80, 443])));
        assert_eq!(parse_ports(""), Ok(PortSet::new()));
        assert_eq!(parse_ports("80,http").unwrap_err().item, "http");
        assert!(parse_ports("0").is_err() && parse_ports("65536").is_err());
        let named = |n: &str| (n == "http").then_some(8080);
        assert_eq!(
            parse_ports_with("http, 9090", named),
            Ok(PortSet::from([8080, 9090]))
        );
        assert_eq!("*".parse(), Ok(InboundPorts::All));
        assert_eq!(" , ".parse::<InboundPorts>(), Err(InboundPortsError::Empty));
        let only: InboundPorts = "9090,8080".parse().unwrap();
        assert_eq!(only.to_string(), "8080,9090");
        assert!(only.contains(8080) && !only.contains(1));
    }
}
