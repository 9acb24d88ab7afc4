//! Node identity: `NodeName` (what logs, metrics labels and handshakes call a node) and
//! `NodeAddr` (where its data plane listens, or `local` for the router's own process).

use std::fmt;
use std::net::SocketAddr;

/// The longest node name, in bytes (names are Prometheus label values and go on the wire).
pub const NODE_NAME_BYTES_MAX: usize = 64;

/// The longest host name in a `host:port` address, in bytes (DNS's limit).
pub const HOST_NAME_BYTES_MAX: usize = 253;

/// A node's name: 1 to [`NODE_NAME_BYTES_MAX`] bytes of ASCII letters, digits, `.`, `_`, `-`.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct NodeName(String);

impl NodeName {
    /// Checks `name` and wraps it; the error says what is wrong (the caller adds where).
    pub fn new(name: &str) -> Result<Self, String> {
        if name.is_empty() {
            return Err("node name is empty".into());
        }
        if name.len() > NODE_NAME_BYTES_MAX {
            return Err(format!(
                "node name is {} bytes, more than NODE_NAME_BYTES_MAX = {NODE_NAME_BYTES_MAX}",
                name.len()
            ));
        }
        if let Some(bad) = name
            .chars()
            .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-')))
        {
            return Err(format!(
                "node name has {bad:?}; use ASCII letters, digits, '.', '_' and '-'"
            ));
        }
        Ok(Self(name.to_string()))
    }

    /// The name as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for NodeName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for NodeName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", self.0)
    }
}

/// Where a node's data plane listens.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum NodeAddr {
    /// An IP address and port, `127.0.0.1:7001` or `[::1]:7001`.
    Socket(SocketAddr),
    /// A host name and port, `expert-1.cluster:7001`, resolved when connecting.
    Host {
        /// The DNS name.
        host: String,
        /// The TCP port.
        port: u16,
    },
    /// The router's own process: its experts are computed in-process, without a connection.
    Local,
}

impl NodeAddr {
    /// Parses `local`, `IP:port` or `host:port`; the error says what is wrong.
    pub fn parse(text: &str) -> Result<Self, String> {
        if text == "local" {
            return Ok(Self::Local);
        }
        if let Ok(addr) = text.parse::<SocketAddr>() {
            return Ok(Self::Socket(addr));
        }
        let Some((host, port)) = text.rsplit_once(':') else {
            return Err(format!(
                "address {text:?} is not \"local\", IP:port or host:port (no port)"
            ));
        };
        let port: u16 = port
            .parse()
            .map_err(|_| format!("address {text:?}: port {port:?} is not a number 0-65535"))?;
        let host_ok = !host.is_empty()
            && host.len() <= HOST_NAME_BYTES_MAX
            && host
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'-')
            && !host.starts_with(['.', '-']);
        if !host_ok {
            return Err(format!(
                "address {text:?}: {host:?} is neither an IP address nor a host name \
                 (ASCII letters, digits, '.', '-'; at most {HOST_NAME_BYTES_MAX} bytes)"
            ));
        }
        Ok(Self::Host {
            host: host.to_string(),
            port,
        })
    }
}

/// The text form `parse` accepts (IPv6 addresses in brackets).
impl fmt::Display for NodeAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Socket(addr) => write!(f, "{addr}"),
            Self::Host { host, port } => write!(f, "{host}:{port}"),
            Self::Local => f.write_str("local"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        assert_eq!(
            NodeName::new("expert-1.a_b").unwrap().as_str(),
            "expert-1.a_b"
        );
        assert!(NodeName::new("").is_err());
        assert!(NodeName::new("a b").unwrap_err().contains("' '"));
        assert!(NodeName::new(&"n".repeat(NODE_NAME_BYTES_MAX)).is_ok());
        assert!(NodeName::new(&"n".repeat(NODE_NAME_BYTES_MAX + 1)).is_err());
        assert!(NodeName::new("é").is_err());
    }

    #[test]
    fn addrs_round_trip() {
        for text in [
            "local",
            "127.0.0.1:7001",
            "[::1]:7002",
            "expert-1.cluster:7003",
        ] {
            let addr = NodeAddr::parse(text).unwrap();
            assert_eq!(addr.to_string(), text);
        }
        assert_eq!(NodeAddr::parse("local").unwrap(), NodeAddr::Local);
    }

    #[test]
    fn bad_addrs() {
        for text in [
            "",
            "127.0.0.1",
            "host:99999",
            "host:",
            ":80",
            "bad host:1",
            "-x:1",
            "a/b:1",
        ] {
            assert!(NodeAddr::parse(text).is_err(), "{text}");
        }
    }
}
