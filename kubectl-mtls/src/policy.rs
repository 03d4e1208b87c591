//! `kubectl mtls policy`: who may call whom. Every injected workload is a
//! server and a caller; each server's resolved allow-list decides each caller
//! with the sidecar's own [`AllowList`], given the identity the caller's
//! certificate carries (its SPIFFE ID and DNS names). A server in `audit`
//! policy lets a refused caller through (and logs it); a `permissive` server
//! also takes plaintext, shown as the caller `(plaintext)`.

use serde::Serialize;

use crate::contract::{AllowList, PeerIdentity, SpiffeId};
use crate::output::table;
use crate::workloads::Workload;

/// The pseudo-caller for plaintext connections.
pub const PLAINTEXT: &str = "(plaintext)";

/// What a server does with one caller.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Verdict {
    Allow,
    /// Not allowed, but let through and logged (policy `audit`).
    Audit,
    Deny,
}

impl Verdict {
    fn as_str(self) -> &'static str {
        match self {
            Verdict::Allow => "allow",
            Verdict::Audit => "audit",
            Verdict::Deny => "-",
        }
    }
}

/// One party of the matrix.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Party {
    /// `namespace/name`.
    pub workload: String,
    pub identity: String,
    pub mode: String,
    pub policy: String,
    pub allowed_clients: Vec<String>,
    /// Why the server's allow-list could not be resolved (then no caller is shown as allowed).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// One caller × server decision.
#[derive(Debug, Clone, Serialize)]
pub struct Edge {
    pub caller: String,
    pub server: String,
    pub verdict: Verdict,
}

/// The whole matrix.
#[derive(Debug, Clone, Serialize)]
pub struct Matrix {
    pub servers: Vec<Party>,
    pub callers: Vec<Party>,
    pub edges: Vec<Edge>,
}

fn party(w: &Workload) -> Party {
    Party {
        workload: w.key(),
        identity: w.identity.clone(),
        mode: w.mode.clone(),
        policy: w.policy.clone(),
        allowed_clients: w.allowed_clients.clone(),
        error: w.error.clone(),
    }
}

/// What `server` does with `caller` (`None`: a plaintext caller).
pub fn decide(server: &Workload, caller: Option<&Workload>) -> Verdict {
    let allowed = match caller {
        None => server.mode == "permissive",
        Some(c) if server.error.is_none() && c.error.is_none() => {
            let peer = PeerIdentity {
                spiffe: SpiffeId::parse(&c.identity),
                uris: vec![c.identity.clone()],
                dns: c.dns_names.clone(),
                subject: String::new(),
            };
            AllowList::parse(&server.allowed_clients.join(","), &server.trust_domain)
                .is_ok_and(|list| list.authorize(&peer).is_ok())
        }
        Some(_) => false,
    };
    match (allowed, server.policy.as_str()) {
        (true, _) => Verdict::Allow,
        (false, "audit") if caller.is_some() => Verdict::Audit,
        (false, _) => Verdict::Deny,
    }
}

/// The matrix of `servers` against `callers`, plus the plaintext caller.
pub fn matrix(servers: &[&Workload], callers: &[&Workload]) -> Matrix {
    let mut edges = Vec::new();
    for s in servers {
        for c in callers {
            edges.push(Edge {
                caller: c.key(),
                server: s.key(),
                verdict: decide(s, Some(c)),
            });
        }
        edges.push(Edge {
            caller: PLAINTEXT.into(),
            server: s.key(),
            verdict: decide(s, None),
        });
    }
    Matrix {
        servers: servers.iter().map(|w| party(w)).collect(),
        callers: callers.iter().map(|w| party(w)).collect(),
        edges,
    }
}

impl Matrix {
    fn verdict(&self, caller: &str, server: &str) -> Verdict {
        self.edges
            .iter()
            .find(|e| e.caller == caller && e.server == server)
            .map_or(Verdict::Deny, |e| e.verdict)
    }

    /// Callers as rows, servers as columns; `allow`, `audit` or `-`.
    pub fn table(&self) -> String {
        if self.servers.is_empty() {
            return "No injected workloads found.\n".into();
        }
        let mut headers = vec!["CALLER \\ SERVER"];
        headers.extend(self.servers.iter().map(|s| s.workload.as_str()));
        let mut rows: Vec<Vec<String>> = Vec::new();
        let names = self
            .callers
            .iter()
            .map(|c| c.workload.as_str())
            .chain([PLAINTEXT]);
        for caller in names {
            let mut row = vec![caller.to_owned()];
            row.extend(
                self.servers
                    .iter()
                    .map(|s| self.verdict(caller, &s.workload).as_str().to_owned()),
            );
            rows.push(row);
        }
        let mut out = table(&headers, &rows);
        for s in self.servers.iter().filter(|s| s.error.is_some()) {
            out.push_str(&format!(
                "\n{}: its annotations do not resolve, so no caller is shown as allowed: {}\n",
                s.workload,
                s.error.as_deref().unwrap_or("")
            ));
        }
        out
    }

    /// A Graphviz digraph: an edge per caller allowed (solid) or audited (dashed).
    pub fn dot(&self) -> String {
        let mut out = String::from("digraph kube_mtls {\n  rankdir=LR;\n");
        for e in self.edges.iter().filter(|e| e.verdict != Verdict::Deny) {
            let style = if e.verdict == Verdict::Audit {
                " style=dashed"
            } else {
                ""
            };
            out.push_str(&format!(
                "  {:?} -> {:?} [label={:?}{style}];\n",
                e.caller,
                e.server,
                e.verdict.as_str()
            ));
        }
        out.push_str("}\n");
        out
    }
}
