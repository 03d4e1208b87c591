//! Steps 4 and 5 of the cluster test: the stored pods serve mTLS with the
//! certificates cert-manager issued, and keep serving while cert-manager
//! re-issues the server's certificate.

use std::net::Ipv4Addr;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use kube_mtls_tests::app::Echo;
use kube_mtls_tests::certs::Issued;
use kube_mtls_tests::cluster::Cluster;
use kube_mtls_tests::kubelet::{RunningPod, container};
use kube_mtls_tests::process::{Proc, output_with_input, plain_get, wait_until};

use super::scenario::{CRON, serial};

/// 4. The allowed caller's plaintext call leaves its pod as mTLS and reaches the
///    app with its SPIFFE ID; a caller not on the allow-list gets 403; a
///    plaintext caller gets nothing; the app's rewritten probes answer.
///
/// Returns the server's address as the caller sees it.
pub fn serve_mtls(c: &Cluster, orders: &RunningPod, front: &RunningPod) -> Ipv4Addr {
    let (_, orders_ip, _) = front.pod.link(&orders.pod);
    let out = front
        .pod
        .command("curl")
        .args(["-sS", "--max-time", "15", "-w", "\n%{http_code}"])
        .arg(format!("http://{orders_ip}:8080/hello"))
        .output()
        .expect("curl");
    let reply = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, code) = reply.rsplit_once('\n').unwrap_or(("", &reply));
    assert_eq!(
        code,
        "200",
        "{reply} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let echo: Echo = serde_json::from_str(body).expect("echo JSON");
    let xfcc = echo.header("x-forwarded-client-cert").expect("XFCC");
    assert!(
        xfcc.contains("URI=spiffe://cluster.local/ns/web/sa/front"),
        "{xfcc}"
    );

    let dir = tempfile::tempdir().expect("tmp");
    let cron = c.secret_files(CRON.namespace, "kube-mtls-cron-tls");
    let reply = s_client(
        dir.path(),
        &cron,
        orders.pod.ip,
        "GET /hello HTTP/1.1\r\nHost: orders\r\nConnection: close\r\n\r\n",
        true,
    );
    assert!(
        reply.contains("HTTP/1.1 403"),
        "batch/cron was not refused: {reply}"
    );

    let plain = Command::new("curl")
        .args([
            "-sS",
            "--max-time",
            "5",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
        ])
        .arg(format!("http://{}:8080/hello", orders.pod.ip))
        .output()
        .expect("curl");
    assert_eq!(
        String::from_utf8_lossy(&plain.stdout),
        "000",
        "a plaintext call was answered"
    );

    let app = container(&orders.spec, "containers", "app");
    for probe in ["readinessProbe", "livenessProbe"] {
        let get = &app[probe]["httpGet"];
        let port = get["port"].as_u64().expect("probe port") as u16;
        let path = get["path"].as_str().expect("probe path");
        let answer = plain_get(orders.pod.addr(port), path);
        assert_eq!(
            answer.as_ref().map(|a| a.0),
            Some(200),
            "{probe} {path}: {answer:?}"
        );
    }
    orders_ip
}

/// `openssl s_client` to `ip:8080` as `id`, sending `request`; everything it printed.
/// With `wait_for_close`, it reads until the server closes (to see a refusal
/// that comes after the handshake); otherwise it quits once its input ends.
fn s_client(dir: &Path, id: &Issued, ip: Ipv4Addr, request: &str, wait_for_close: bool) -> String {
    for (f, data) in [
        ("c.crt", &id.cert_pem),
        ("c.key", &id.key_pem),
        ("ca.crt", &id.ca_pem),
    ] {
        std::fs::write(dir.join(f), data).expect("write PEM");
    }
    let mut cmd = Command::new("openssl");
    cmd.args(["s_client", "-connect", &format!("{ip}:8080")])
        .args(wait_for_close.then_some("-ign_eof"))
        .arg("-cert")
        .arg(dir.join("c.crt"))
        .arg("-key")
        .arg(dir.join("c.key"))
        .arg("-CAfile")
        .arg(dir.join("ca.crt"));
    let out = output_with_input(&mut cmd, request.as_bytes());
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The serial of the certificate `ip:8080` serves now, in a new handshake.
fn served_serial(dir: &Path, id: &Issued, ip: Ipv4Addr) -> String {
    let out = s_client(dir, id, ip, "", false);
    let start = out.find("-----BEGIN CERTIFICATE-----");
    let end = out.find("-----END CERTIFICATE-----");
    match (start, end) {
        (Some(s), Some(e)) => serial(&out[s..e + 25]),
        _ => String::new(),
    }
}

/// 5. cert-manager re-issues the server's certificate (as `cmctl renew` asks
///    it to); the stand-in kubelet swaps the Secret volume as kubelet does;
///    calls succeed throughout and new handshakes show the new serial.
pub fn rotate(c: &mut Cluster, orders: &mut RunningPod, front: &RunningPod, orders_ip: Ipv4Addr) {
    let dir = tempfile::tempdir().expect("tmp");
    let secret = "kube-mtls-orders-tls";
    let before = c.secret_files("shop", secret);
    let caller = c.secret_files("web", "kube-mtls-front-tls");
    assert_eq!(
        served_serial(dir.path(), &caller, orders.pod.ip),
        serial(&before.cert_pem)
    );

    let (log, stop) = (front.pod.dir.join("calls.log"), front.pod.dir.join("stop"));
    let script = format!(
        "while [ ! -e {stop} ]; do curl -s -o /dev/null --max-time 10 -w '%{{http_code}}\\n' http://{orders_ip}:8080/during-rotation >> {log}; done",
        stop = stop.display(),
        log = log.display()
    );
    let mut calls = Proc::spawn({
        let mut cmd = front.pod.command("bash");
        cmd.args(["-c", &script]);
        cmd
    });
    let count = || {
        std::fs::read_to_string(&log)
            .map(|l| l.lines().count())
            .unwrap_or(0)
    };
    assert!(
        wait_until(Duration::from_secs(30), || count() >= 10),
        "no calls before rotation"
    );

    renew(c, "shop", "kube-mtls-orders");
    let mut next = before.clone();
    c.wait("the re-issued Secret", Duration::from_secs(120), |c| {
        next = c.secret_files("shop", secret);
        next.cert_pem != before.cert_pem
    });
    orders.rotate(&next);
    let want = serial(&next.cert_pem);
    assert!(
        wait_until(Duration::from_secs(30), || served_serial(
            dir.path(),
            &caller,
            orders.pod.ip
        ) == want),
        "the sidecar never served the new certificate {want}"
    );
    let at_reload = count();
    assert!(
        wait_until(Duration::from_secs(30), || count() >= at_reload + 10),
        "calls stopped after rotation"
    );
    std::fs::write(&stop, "").expect("stop file");
    assert!(
        calls.wait_exit(Duration::from_secs(20)).is_some(),
        "call loop did not stop"
    );
    let codes = std::fs::read_to_string(&log).expect("call log");
    let failed: Vec<&str> = codes.lines().filter(|l| *l != "200").collect();
    assert!(
        failed.is_empty(),
        "{} of {} calls failed during rotation: {failed:?}",
        failed.len(),
        codes.lines().count()
    );
}

/// Marks a Certificate for re-issuance, as `cmctl renew` does: an `Issuing`
/// condition on its status.
pub fn renew(c: &Cluster, ns: &str, certificate: &str) {
    let now = Command::new("date")
        .args(["-u", "+%Y-%m-%dT%H:%M:%SZ"])
        .output()
        .expect("date");
    let patch = serde_json::json!([{"op": "add", "path": "/status/conditions/-", "value": {
        "type": "Issuing", "status": "True", "reason": "ManuallyTriggered",
        "message": "re-issue requested by the cluster test",
        "lastTransitionTime": String::from_utf8_lossy(&now.stdout).trim(),
    }}]);
    c.kubectl_ok(&[
        "-n",
        ns,
        "patch",
        "certificate",
        certificate,
        "--subresource=status",
        "--type=json",
        "-p",
        &patch.to_string(),
    ]);
}
