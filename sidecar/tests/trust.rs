//! The trust bundle (`--trust-bundle`) against the real binary: peers are
//! verified against the bundle, not against the CA that issued the pod's own
//! certificate, so a CA rotation (issue 22) does not cut traffic; the bundle
//! follows a ConfigMap's `..data` symlink swap on its own, a bad one leaves
//! the last good one serving, /metrics says which CAs are trusted, and a
//! failed handshake names the untrusted issuer instead of calling the peer a
//! non-mTLS one.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use kube_mtls_tests::app;
use kube_mtls_tests::certs::{Issued, Leaf, TestCa};
use kube_mtls_tests::deadline::PATIENCE;
use kube_mtls_tests::netns::Pod;
use kube_mtls_tests::process::{Sidecar, free_port, output, output_within, plain_get, wait_until};
use kube_mtls_tests::require_netns;
use kube_mtls_tests::sidecar_env::{CLIENT_ID, SERVER_ID, sample};
use kube_mtls_tests::tls::{HttpConn, client_config, get};

const EXPIRY: &str = "kube_mtls_sidecar_trusted_ca_expiry_seconds";
/// 2095-01-01T00:00:00Z, the end of every test CA.
const CA_NOT_AFTER: f64 = 3_944_678_400.0;

/// A trust bundle laid out as kubelet mounts a ConfigMap key:
/// `ca-bundle.crt -> ..data/ca-bundle.crt`, `..data -> ..<generation>/`,
/// updated by one atomic rename of a new `..data` link. Directories are
/// world-readable so a sidecar under its own UID can read them.
struct BundleDir {
    path: PathBuf,
    generation: u32,
}

impl BundleDir {
    fn create(path: &Path, pem: &str) -> BundleDir {
        readable_dir(path);
        let mut dir = BundleDir {
            path: path.to_owned(),
            generation: 0,
        };
        dir.swap(pem);
        std::os::unix::fs::symlink("..data/ca-bundle.crt", dir.file()).expect("link");
        dir
    }

    fn file(&self) -> PathBuf {
        self.path.join("ca-bundle.crt")
    }

    fn file_arg(&self) -> String {
        self.file().to_str().expect("utf-8 path").to_owned()
    }

    fn swap(&mut self, pem: &str) {
        self.generation += 1;
        let generation = format!("..2026_01_01_00_00_{:02}.1", self.generation);
        let dir = self.path.join(&generation);
        readable_dir(&dir);
        let file = dir.join("ca-bundle.crt");
        std::fs::write(&file, pem).expect("bundle");
        set_mode(&file, 0o644);
        let tmp = self.path.join("..data_tmp");
        let _ = std::fs::remove_file(&tmp);
        std::os::unix::fs::symlink(&generation, &tmp).expect("link");
        std::fs::rename(&tmp, self.path.join("..data")).expect("swap");
    }
}

fn readable_dir(path: &Path) {
    std::fs::create_dir_all(path).expect("dir");
    set_mode(path, 0o755);
}

fn set_mode(path: &Path, mode: u32) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).expect("chmod");
}

/// `(subject, value)` of every `trusted_ca_expiry_seconds` series.
fn trusted(metrics: &str) -> Vec<(String, f64)> {
    let mut out: Vec<(String, f64)> = metrics
        .lines()
        .filter_map(|l| l.strip_prefix(EXPIRY)?.strip_prefix("{subject=\""))
        .filter_map(|rest| {
            let (subject, rest) = rest.split_once('"')?;
            let value = rest.rsplit(' ').next()?.parse().ok()?;
            Some((subject.to_owned(), value))
        })
        .collect();
    out.sort_by(|a, b| a.0.cmp(&b.0));
    out
}

/// The first line of `logs` that says `what`.
fn log_line<'a>(logs: &'a str, what: &str) -> &'a str {
    logs.lines()
        .find(|l| l.contains(what))
        .unwrap_or_else(|| panic!("no {what:?} in the log:\n{logs}"))
}

/// A handshake the server refuses: the connection, or its first request, fails.
async fn refused(addr: SocketAddr, cfg: Arc<rustls::ClientConfig>) -> bool {
    match HttpConn::open(addr, cfg).await {
        Err(_) => true,
        Ok(mut c) => c.send("GET", "/", &[], "").await.is_err(),
    }
}

/// Polls an async condition every 50 ms until it holds, for at most `limit`.
async fn eventually<F, Fut>(limit: Duration, mut cond: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        if cond().await {
            return true;
        }
        if tokio::time::Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Callers of two CAs, a sidecar whose own certificate (and ca.crt) is from
/// the first, and a bundle of both.
struct TwoCas {
    sidecar: Sidecar,
    ca2: TestCa,
    bundle: BundleDir,
    addr: SocketAddr,
    /// A caller from CA 1 and one from CA 2; both trust the sidecar's CA.
    one: Arc<rustls::ClientConfig>,
    two: Arc<rustls::ClientConfig>,
    _dir: tempfile::TempDir,
}

impl TwoCas {
    async fn start() -> TwoCas {
        let (ca1, ca2) = (TestCa::new("workload CA 1"), TestCa::new("workload CA 2"));
        let dir = tempfile::tempdir().expect("temp dir");
        let certs = dir.path().join("certs");
        ca1.issue(&Leaf::spiffe(SERVER_ID))
            .write_dir(&certs)
            .expect("certs");
        let pem = format!("{}{}", ca1.cert_pem, ca2.cert_pem);
        let bundle = BundleDir::create(&dir.path().join("trust"), &pem);
        let app = app::start().await;
        let listen = free_port();
        let sidecar = Sidecar::start(
            &certs,
            &[(listen, app.port())],
            &["--trust-bundle", &bundle.file_arg()],
        );
        let caller = |ca: &TestCa| {
            client_config(
                &ca1.cert_pem,
                Some(&ca.issue(&Leaf::spiffe(CLIENT_ID))),
                &["http/1.1"],
            )
        };
        TwoCas {
            addr: SocketAddr::from(([127, 0, 0, 1], listen)),
            one: caller(&ca1),
            two: caller(&ca2),
            ca2,
            sidecar,
            bundle,
            _dir: dir,
        }
    }

    fn metrics(&self) -> String {
        plain_get(self.sidecar.admin, "/metrics")
            .map(|(_, b)| b)
            .unwrap_or_default()
    }

    fn ready(&self) -> u16 {
        plain_get(self.sidecar.admin, "/ready").map_or(0, |(s, _)| s)
    }

    async fn status(&self, cfg: &Arc<rustls::ClientConfig>) -> u16 {
        let reply = get(self.addr, cfg.clone(), "/", &[]).await;
        reply.map_or(0, |r| r.status.as_u16())
    }
}

/// The bundle is the only place CA 2 is: were `--trust-bundle` ignored (and
/// ca.crt trusted instead), CA 2's caller would be refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bundle_of_two_cas_admits_callers_of_both() {
    let env = TwoCas::start().await;
    assert_eq!(env.status(&env.one).await, 200);
    assert_eq!(
        env.status(&env.two).await,
        200,
        "a caller from the bundle's second CA was refused:\n{}",
        env.sidecar.proc.logs()
    );
    let m = env.metrics();
    let both = vec![
        ("CN=workload CA 1".to_owned(), CA_NOT_AFTER),
        ("CN=workload CA 2".to_owned(), CA_NOT_AFTER),
    ];
    assert_eq!(trusted(&m), both, "{m}");
    let logs = env.sidecar.proc.logs();
    assert!(
        logs.contains("kube-mtls-sidecar ready") && logs.contains("CN=workload CA 2"),
        "the start-up line names the trusted CAs:\n{logs}"
    );
}

/// The rotation's last step: the old CA leaves the bundle, by a ConfigMap's
/// symlink swap. Its callers are refused from then on, counted and logged by
/// issuer; the sidecar's own certificate, still from the old CA, keeps
/// serving with a warning; then a bundle that does not load changes nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_ca_removed_from_the_bundle_is_refused_and_a_bad_bundle_changes_nothing() {
    let mut env = TwoCas::start().await;
    assert_eq!(env.status(&env.one).await, 200);
    env.bundle.swap(&env.ca2.cert_pem);
    let gone = eventually(PATIENCE, || refused(env.addr, env.one.clone())).await;
    assert!(
        gone,
        "CA 1's caller still served:\n{}",
        env.sidecar.proc.logs()
    );
    assert_eq!(env.status(&env.two).await, 200);
    assert_eq!(env.ready(), 200);
    let m = env.metrics();
    assert_eq!(
        trusted(&m),
        vec![("CN=workload CA 2".to_owned(), CA_NOT_AFTER)],
        "{m}"
    );
    let failures = "kube_mtls_sidecar_handshake_failures_total{direction=\"inbound\",reason=\"untrusted_issuer\"}";
    assert!(sample(&m, failures) >= 1.0, "{m}");
    assert!(
        sample(
            &m,
            "kube_mtls_sidecar_trust_bundle_reloads_total{result=\"ok\"}"
        ) >= 1.0,
        "{m}"
    );
    let logs = env.sidecar.proc.logs();
    let line = log_line(&logs, "client certificate refused");
    assert!(
        line.contains("CN=workload CA 1") && line.contains("untrusted_issuer"),
        "{line}"
    );
    assert!(
        logs.contains("issued by a CA the trust bundle does not hold"),
        "no warning that the pod's own CA left the bundle:\n{logs}"
    );

    env.bundle.swap("not a certificate\n");
    let refused_total = "kube_mtls_sidecar_trust_bundle_reloads_total{result=\"refused\"}";
    let counted = wait_until(PATIENCE, || sample(&env.metrics(), refused_total) >= 1.0);
    assert!(counted, "{}", env.sidecar.proc.logs());
    let logs = env.sidecar.proc.logs();
    let line = log_line(&logs, "trust bundle refused");
    assert!(
        line.contains(&env.bundle.file_arg()) && line.contains("holds no CA certificate"),
        "{line}"
    );
    assert_eq!(env.status(&env.two).await, 200);
    assert!(refused(env.addr, env.one.clone()).await);
    assert_eq!(env.ready(), 200);
    let m = env.metrics();
    assert_eq!(
        trusted(&m),
        vec![("CN=workload CA 2".to_owned(), CA_NOT_AFTER)],
        "{m}"
    );
}

/// A bundle that cannot serve at start-up stops the sidecar, naming the
/// flag, its variable, the file and the problem.
#[test]
fn a_bad_bundle_at_start_up_names_the_flag_and_the_problem() {
    let ca = TestCa::new("ca");
    let dir = tempfile::tempdir().expect("temp dir");
    let certs = dir.path().join("certs");
    let leaf: Issued = ca.issue(&Leaf::spiffe(SERVER_ID));
    leaf.write_dir(&certs).expect("certs");
    let bundle = dir.path().join("bundle.pem");
    std::fs::write(&bundle, &leaf.cert_pem).expect("bundle");
    let run = |bundle: &Path| {
        let mut cmd = Command::new(kube_mtls_tests::bins::bin("kube-mtls-sidecar"));
        cmd.arg("--cert-dir")
            .arg(&certs)
            .arg("--trust-bundle")
            .arg(bundle);
        cmd.args([
            "--outbound-port",
            "0",
            "--inbound-port",
            &free_port().to_string(),
        ]);
        cmd.args(["--admin-port", &free_port().to_string()]);
        let out = output(&mut cmd);
        assert!(!out.status.success(), "{bundle:?} was taken");
        String::from_utf8_lossy(&out.stderr).into_owned()
    };
    let err = run(&bundle);
    for part in [
        "--trust-bundle",
        "KUBE_MTLS_TRUST_BUNDLE",
        "bundle.pem",
        "not a CA certificate",
    ] {
        assert!(err.contains(part), "{part} missing: {err}");
    }
    let err = run(&dir.path().join("missing.pem"));
    for part in [
        "--trust-bundle",
        "KUBE_MTLS_TRUST_BUNDLE",
        "missing.pem",
        "does not exist",
    ] {
        assert!(err.contains(part), "{part} missing: {err}");
    }
}

const A_ID: &str = "spiffe://cluster.local/ns/web/sa/front";
const B_ID: &str = "spiffe://cluster.local/ns/shop/sa/orders";

/// The plaintext call app A makes from inside pod A: (status, body).
fn call(pod: &Pod, ip: std::net::Ipv4Addr) -> (String, String) {
    let mut curl = pod.command("curl");
    curl.args(["-sS", "--max-time", "15", "-w", "\n%{http_code}"])
        .arg(format!("http://{ip}:8080/from-a"));
    let out = output_within(&mut curl, b"", PATIENCE).unwrap_or_else(|e| panic!("{e}"));
    let reply = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, status) = reply.rsplit_once('\n').unwrap_or(("", &reply));
    (status.to_owned(), body.to_owned())
}

fn pod_metrics(pod: &Pod) -> String {
    let admin = pod.addr(kube_mtls_contract::names::ADMIN_PORT);
    plain_get(admin, "/metrics")
        .map(|(_, b)| b)
        .unwrap_or_default()
}

/// Runs `kube-mtls-init` in `pod` with `args`, which must succeed.
fn init(pod: &Pod, args: &[&str]) {
    let out = pod.init(args);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Pod B: the echo app on 8080 behind init and a sidecar whose certificate
/// (and ca.crt, its trust without the flag) is from `ca`. Returns the pod,
/// its cert dir, its certificate and its sidecar's log file.
fn server_pod(ca: &TestCa) -> (Pod, PathBuf, Issued, PathBuf) {
    let mut b = Pod::create();
    let certs = b.dir.join("certs");
    let leaf = ca.issue(&Leaf::spiffe(B_ID));
    leaf.write_dir(&certs).expect("certs");
    b.start_app(&[8080]);
    init(&b, &["--inbound-ports", "8080"]);
    let log = b.start_sidecar(&certs, &[]).log_path().to_owned();
    (b, certs, leaf, log)
}

/// Pod A, linked to `server`: calls on port 8080 leave through its sidecar,
/// whose certificate is from `ca` and whose bundle holds `ca` only. Returns
/// the pod, the server's address on the link, and the bundle.
fn caller_pod(ca: &TestCa, server: &Pod) -> (Pod, std::net::Ipv4Addr, BundleDir) {
    let mut a = Pod::create();
    let (_, server_ip, _) = a.link(server);
    let certs = a.dir.join("certs");
    ca.issue(&Leaf::spiffe(A_ID))
        .write_dir(&certs)
        .expect("certs");
    let bundle = BundleDir::create(&a.dir.join("trust"), &ca.cert_pem);
    init(&a, &["--inbound-ports", "9999", "--outbound-ports", "8080"]);
    a.start_sidecar(&certs, &["--trust-bundle", &bundle.file_arg()]);
    (a, server_ip, bundle)
}

/// Outbound, between real pods: a server whose CA is not in the caller's
/// bundle is named by its issuer (not "does not speak mTLS"); then, trusted,
/// a server that refuses the caller's CA is named as such; then, once the
/// server's ca.crt (its bundle without the flag) holds the caller's CA, the
/// call goes through. Each failure is counted by reason on its side.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outbound_failures_name_the_certificate_at_fault() {
    require_netns!();
    let (ca_a, ca_b) = (TestCa::new("caller CA"), TestCa::new("server CA"));
    let (b, b_certs, b_leaf, b_log) = server_pod(&ca_b);
    let (a, b_ip, mut bundle) = caller_pod(&ca_a, &b);

    let (status, body) = call(&a, b_ip);
    assert_eq!(status, "502", "{body}");
    assert!(
        body.contains("presented a certificate issued by CN=server CA that this sidecar does not trust (trusted CAs: CN=caller CA)")
            && !body.contains("does not speak mTLS"),
        "{body}"
    );
    let m = pod_metrics(&a);
    let outbound = |reason: &str| {
        format!(
            "kube_mtls_sidecar_handshake_failures_total{{direction=\"outbound\",reason=\"{reason}\"}}"
        )
    };
    assert!(sample(&m, &outbound("untrusted_issuer")) >= 1.0, "{m}");

    // A trusts B now; B (ca.crt: its own CA only) does not trust A.
    bundle.swap(&format!("{}{}", ca_a.cert_pem, ca_b.cert_pem));
    let reloaded = wait_until(PATIENCE, || {
        sample(
            &pod_metrics(&a),
            "kube_mtls_sidecar_trust_bundle_reloads_total{result=\"ok\"}",
        ) >= 1.0
    });
    assert!(reloaded, "{}", pod_metrics(&a));
    let (status, body) = call(&a, b_ip);
    assert_eq!(status, "502", "{body}");
    assert!(
        body.contains("refused this sidecar's certificate (issued by CN=caller CA)"),
        "{body}"
    );
    assert!(sample(&pod_metrics(&a), &outbound("peer_refused")) >= 1.0);
    let inbound = "kube_mtls_sidecar_handshake_failures_total{direction=\"inbound\",reason=\"untrusted_issuer\"}";
    assert!(
        sample(&pod_metrics(&b), inbound) >= 1.0,
        "{}",
        pod_metrics(&b)
    );
    let b_logs = std::fs::read_to_string(&b_log).unwrap_or_default();
    assert!(
        b_logs
            .lines()
            .any(|l| l.contains("client certificate refused") && l.contains("CN=caller CA")),
        "{b_logs}"
    );

    // B's ca.crt gains A's CA: B's trust, without the flag, follows it.
    Issued {
        ca_pem: format!("{}{}", ca_b.cert_pem, ca_a.cert_pem),
        ..b_leaf
    }
    .write_dir(&b_certs)
    .expect("certs");
    let through = wait_until(PATIENCE, || call(&a, b_ip).0 == "200");
    assert!(through, "{:?}\n{b_logs}", call(&a, b_ip));
}
