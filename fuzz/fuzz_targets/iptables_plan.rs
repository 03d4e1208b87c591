//! `kube-mtls-init`'s flags (through its own clap parser and
//! `Config::from_args`) → `rules::plan` for both families →
//! `rules::render_install` / `render_cleanup` against an arbitrary
//! `iptables-save` listing.
//!
//! Why: the init container runs as root with NET_ADMIN, and its flags come
//! from pod annotations (via the webhook). A bad rule line fails the whole
//! `iptables-restore` transaction (the pod never starts), and a line that
//! splits into other arguments than intended installs other rules. Checks:
//! no panic; every rule spec is a list of non-empty, non-whitespace
//! arguments separated by single spaces; every comment is one
//! `iptables-restore` argument (no quote, backslash or line break) within the
//! comment match's 256-byte limit; every line of the restore input is
//! non-empty and tokenizes (quote-aware) into non-empty arguments; the
//! admin port's RETURN comes before any redirect.
#![no_main]

use arbitrary::Arbitrary;
use clap::Parser;
use kube_mtls_init::config::{Args, Config};
use kube_mtls_init::rules::{self, Existing, Family, INBOUND_CHAIN, OUTBOUND_CHAIN};
use libfuzzer_sys::fuzz_target;

#[derive(Debug, Arbitrary)]
enum PortTok {
    Port(u16),
    Big(u32),
    Star,
    Raw(String),
}

#[derive(Debug, Arbitrary)]
enum CidrTok {
    V4(u32, u8),
    V6(u128, u8),
    Addr4(u32),
    Addr6(u128),
    Raw(String),
}

#[derive(Debug, Arbitrary)]
enum Num {
    Value(u32),
    Raw(String),
}

#[derive(Debug, Arbitrary)]
struct Input {
    inbound: Vec<PortTok>,
    skip_inbound: Vec<PortTok>,
    outbound: Vec<PortTok>,
    cidrs: Vec<CidrTok>,
    spaced: bool,
    inbound_port: Num,
    admin_port: Num,
    outbound_port: Num,
    proxy_uid: Num,
    save: String,
}

fn ports(t: &[PortTok], sep: &str) -> String {
    t.iter()
        .map(|t| match t {
            PortTok::Port(p) => p.to_string(),
            PortTok::Big(p) => p.to_string(),
            PortTok::Star => "*".into(),
            PortTok::Raw(s) => s.clone(),
        })
        .collect::<Vec<_>>()
        .join(sep)
}

fn cidrs(t: &[CidrTok], sep: &str) -> String {
    t.iter()
        .map(|t| match t {
            CidrTok::V4(a, p) => format!("{}/{}", std::net::Ipv4Addr::from(*a), p % 40),
            CidrTok::V6(a, p) => format!("{}/{}", std::net::Ipv6Addr::from(*a), p % 140),
            CidrTok::Addr4(a) => std::net::Ipv4Addr::from(*a).to_string(),
            CidrTok::Addr6(a) => std::net::Ipv6Addr::from(*a).to_string(),
            CidrTok::Raw(s) => s.clone(),
        })
        .collect::<Vec<_>>()
        .join(sep)
}

fn num(n: &Num) -> String {
    match n {
        Num::Value(v) => v.to_string(),
        Num::Raw(s) => s.clone(),
    }
}

/// Splits a restore line as iptables-restore does: whitespace, with `"..."` one argument.
fn tokens(line: &str) -> Result<Vec<String>, String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut quoted = false;
    let mut in_token = false;
    for c in line.chars() {
        match c {
            '"' => {
                quoted = !quoted;
                in_token = true;
            }
            c if c.is_whitespace() && !quoted => {
                if in_token {
                    out.push(std::mem::take(&mut cur));
                    in_token = false;
                }
            }
            c => {
                cur.push(c);
                in_token = true;
            }
        }
    }
    if quoted {
        return Err(format!("unbalanced quote in {line:?}"));
    }
    if in_token {
        out.push(cur);
    }
    Ok(out)
}

fuzz_target!(|input: Input| {
    let sep = if input.spaced { ", " } else { "," };
    let argv = [
        "kube-mtls-init".to_owned(),
        format!("--inbound-ports={}", ports(&input.inbound, sep)),
        format!("--skip-inbound-ports={}", ports(&input.skip_inbound, sep)),
        format!("--outbound-ports={}", ports(&input.outbound, sep)),
        format!("--skip-outbound-cidrs={}", cidrs(&input.cidrs, sep)),
        format!("--inbound-port={}", num(&input.inbound_port)),
        format!("--admin-port={}", num(&input.admin_port)),
        format!("--outbound-port={}", num(&input.outbound_port)),
        format!("--proxy-uid={}", num(&input.proxy_uid)),
        "--dry-run".to_owned(),
    ];
    let existing = Existing::from_save(&input.save);
    let _ = rules::render_cleanup(&existing);
    let Ok(args) = Args::try_parse_from(&argv) else {
        return;
    };
    let Ok(cfg) = Config::from_args(&args) else {
        return;
    };
    for family in [Family::V4, Family::V6] {
        let plan = rules::plan(&cfg, family);
        for r in &plan.rules {
            assert!(
                r.chain == INBOUND_CHAIN || r.chain == OUTBOUND_CHAIN,
                "{r:?}"
            );
            assert!(
                r.spec
                    .split(' ')
                    .all(|a| !a.is_empty() && !a.contains(char::is_whitespace)),
                "rule spec is not single-space-separated arguments: {:?}",
                r.spec
            );
            assert!(r.spec.contains(" -j "), "no target: {:?}", r.spec);
            assert!(
                !r.why.is_empty() && !r.why.contains(['"', '\\', '\n', '\r', '\0']),
                "comment would not be one argument: {:?}",
                r.why
            );
            assert!(
                r.why.len() <= 255,
                "comment over iptables' 256-byte limit: {:?}",
                r.why
            );
        }
        let admin = format!("-p tcp --dport {} -j RETURN", cfg.admin_port);
        let first_redirect = plan.rules.iter().position(|r| r.spec.contains("REDIRECT"));
        let admin_at = plan
            .rules
            .iter()
            .position(|r| r.spec == admin)
            .expect("admin RETURN");
        assert!(first_redirect.is_none_or(|r| admin_at < r), "{plan:?}");

        let restore = rules::render_install(&plan, &Existing::default());
        for line in restore.lines() {
            assert!(!line.trim().is_empty(), "an empty line in:\n{restore}");
            let t = tokens(line).unwrap_or_else(|e| panic!("{e}\n{restore}"));
            assert!(
                t.iter().all(|a| !a.trim().is_empty()),
                "an empty argument in {line:?}"
            );
        }
        // Against whatever a previous run left (any listing): no panic.
        let _ = rules::render_install(&plan, &existing);
    }
});
