#!/usr/bin/env python3
"""kube-mtls benchmark: the sidecar against nginx, HAProxy and the direct path.

Every contestant terminates mutual TLS (client certificate required and
verified against the same CA, TLS 1.3, ECDSA P-256), adds a header naming the
caller, and forwards over pooled keep-alive HTTP/1.1 connections to the same
upstream. The proxy runs alone on CPU 0 with one worker; the load generator and
the upstream share CPU 1. Each figure is the median over --reps repetitions.

Run it through bench/run.sh, which installs nginx and HAProxy and builds the
release binaries first.
"""

import argparse
import json
import os
import signal
import socket
import ssl
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
UPSTREAM = 18080
UPSTREAM_TCP = 18090
PROXY = 18443
PROXY_TCP = 18445
SIDECAR_ADMIN = 18020
WEBHOOK = 18444
WEBHOOK_PLAIN = 18081
PROXY_CPU = "0"
LOAD_CPU = "1"
CLK_TCK = os.sysconf("SC_CLK_TCK")


def target_dir():
    return Path(os.environ.get("CARGO_TARGET_DIR", ROOT / "target")) / "release"


def binary(name):
    path = target_dir() / name
    if not path.is_file():
        sys.exit(f"{path} is missing: run `cargo build --release --locked` first (bench/run.sh does)")
    return str(path)


def pinned(cpu, argv):
    return ["taskset", "-c", cpu] + argv


def wait_port(port, proc, what, timeout=20.0):
    """Polls until something accepts on 127.0.0.1:port; fails if `proc` died."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            sys.exit(f"{what} exited with {proc.returncode} before listening on {port}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    sys.exit(f"{what} did not listen on {port} within {timeout}s")


def process_tree(pid):
    """The pid and all its descendants."""
    pids = [pid]
    i = 0
    while i < len(pids):
        try:
            children = Path(f"/proc/{pids[i]}/task/{pids[i]}/children").read_text().split()
        except OSError:
            children = []
        pids.extend(int(c) for c in children)
        i += 1
    return pids


def cpu_ticks(pids):
    """(user, kernel) CPU time of the processes so far, in clock ticks."""
    user = kernel = 0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        user += int(fields[11])  # utime
        kernel += int(fields[12])  # stime
    return user, kernel


def proc_kb(pids, name, fields):
    """The kB figures `fields` of /proc/<pid>/`name`, each summed over the
    processes (one that has exited counts nothing)."""
    totals = dict.fromkeys(fields, 0)
    for pid in pids:
        try:
            text = Path(f"/proc/{pid}/{name}").read_text()
        except OSError:
            continue
        for line in text.splitlines():
            key = line.split(":", 1)[0]
            if key in totals:
                totals[key] += int(line.split()[1])
    return [totals[f] for f in fields]


def memory_kb(pids):
    """(VmRSS, RssAnon) summed over the processes, in kB."""
    rss, anon = proc_kb(pids, "status", ["VmRSS", "RssAnon"])
    return rss, anon


def pss_kb(pids):
    """Proportional set size summed over the processes, in kB: what a node
    pays per copy when many copies of the same binary run (shared pages are
    split between them)."""
    return proc_kb(pids, "smaps_rollup", ["Pss"])[0]


class Contestant:
    """A proxy under test, started fresh for each repetition."""

    name = ""

    def __init__(self, certs, work, wrapper=()):
        self.certs = certs
        self.work = work
        self.proc = None
        # A command the proxy runs under (valgrind, for instruction counts).
        self.wrapper = list(wrapper)

    def argv(self):
        raise NotImplementedError

    def start(self):
        self.proc = subprocess.Popen(
            pinned(PROXY_CPU, self.wrapper + self.argv()),
            stdout=subprocess.DEVNULL,
            stderr=open(self.work / f"{self.name}.log", "ab"),
        )
        timeout = 180.0 if self.wrapper else 20.0
        wait_port(PROXY, self.proc, self.name, timeout)
        wait_port(PROXY_TCP, self.proc, self.name, timeout)

    def pids(self):
        return process_tree(self.proc.pid)

    def stop(self, timeout=10):
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


class Direct(Contestant):
    """No proxy: plaintext straight to the upstream, the ceiling."""

    name = "direct"

    def start(self):
        self.proc = None

    def pids(self):
        return []

    def stop(self, timeout=0):
        pass


class KubeMtls(Contestant):
    name = "kube-mtls"

    def argv(self):
        return [
            binary("kube-mtls-sidecar"),
            "--listen", f"{PROXY}:{UPSTREAM},{PROXY_TCP}:{UPSTREAM_TCP}",
            "--tcp-ports", str(UPSTREAM_TCP),
            "--cert-dir", str(self.certs / "server"),
            "--inbound-port", "18006",
            "--outbound-port", "0",
            "--admin-port", str(SIDECAR_ADMIN),
            "--workers", "1",
            "--max-connections", "20000",
            "--log-format", "json",
            "--log-level", "warn",
        ]


class Nginx(Contestant):
    name = "nginx"

    def argv(self):
        server = self.certs / "server"
        conf = self.work / "nginx.conf"
        # Debian builds the stream module as a dynamic module.
        module = Path("/usr/lib/nginx/modules/ngx_stream_module.so")
        load = f"load_module {module};" if module.is_file() else ""
        conf.write_text(f"""
{load}
user root;
worker_processes 1;
daemon off;
pid {self.work}/nginx.pid;
error_log {self.work}/nginx-error.log warn;
events {{ worker_connections 20000; }}
http {{
    access_log off;
    client_body_temp_path {self.work}/nginx-body;
    proxy_temp_path {self.work}/nginx-proxy;
    fastcgi_temp_path {self.work}/nginx-fastcgi;
    uwsgi_temp_path {self.work}/nginx-uwsgi;
    scgi_temp_path {self.work}/nginx-scgi;
    keepalive_requests 10000000;
    upstream app {{
        server 127.0.0.1:{UPSTREAM};
        keepalive 128;
        keepalive_requests 10000000;
    }}
    server {{
        listen 127.0.0.1:{PROXY} ssl http2;
        ssl_certificate {server}/tls.crt;
        ssl_certificate_key {server}/tls.key;
        ssl_client_certificate {server}/ca.crt;
        ssl_verify_client on;
        ssl_protocols TLSv1.2 TLSv1.3;
        ssl_session_cache off;
        ssl_session_tickets off;
        location / {{
            proxy_pass http://app;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_set_header X-Forwarded-Client-Cert "Hash=$ssl_client_fingerprint;Subject=\\"$ssl_client_s_dn\\"";
        }}
    }}
}}
stream {{
    server {{
        listen 127.0.0.1:{PROXY_TCP} ssl;
        ssl_certificate {server}/tls.crt;
        ssl_certificate_key {server}/tls.key;
        ssl_client_certificate {server}/ca.crt;
        ssl_verify_client on;
        ssl_protocols TLSv1.2 TLSv1.3;
        ssl_session_cache off;
        ssl_session_tickets off;
        proxy_pass 127.0.0.1:{UPSTREAM_TCP};
    }}
}}
""")
        return ["nginx", "-c", str(conf)]


class Haproxy(Contestant):
    name = "haproxy"

    def argv(self):
        server = self.certs / "server"
        conf = self.work / "haproxy.cfg"
        conf.write_text(f"""
global
    nbthread 1
    maxconn 8000
    tune.ssl.cachesize 0
defaults
    mode http
    timeout connect 5s
    timeout client 30s
    timeout server 30s
    timeout http-keep-alive 30s
    option http-keep-alive
frontend mtls
    bind 127.0.0.1:{PROXY} ssl crt {server}/combined.pem ca-file {server}/ca.crt verify required alpn h2,http/1.1 no-tls-tickets
    http-request set-header X-Forwarded-Client-Cert "Hash=%[ssl_c_sha1,hex];Subject=\\"%[ssl_c_s_dn]\\""
    default_backend app
backend app
    http-reuse always
    server app 127.0.0.1:{UPSTREAM}
frontend mtls_tcp
    mode tcp
    bind 127.0.0.1:{PROXY_TCP} ssl crt {server}/combined.pem ca-file {server}/ca.crt verify required no-tls-tickets
    default_backend app_tcp
backend app_tcp
    mode tcp
    server app 127.0.0.1:{UPSTREAM_TCP}
""")
        return ["haproxy", "-db", "-f", str(conf)]


def loadgen(args, scenario, port, tls, extra=(), seconds=None, client_cert=True, proxy=None):
    """Runs one scenario and returns its report. With `proxy` (a callable
    giving the proxy's pids), the report also holds the proxy's CPU use over
    the run (`cpu_pct`), its CPU time per request in user space and in the
    kernel (`user_us`, `kernel_us`; the run includes opening the connections),
    and its peak memory (`rss_kb`, `anon_kb`), sampled every 200 ms."""
    argv = [binary("kube-mtls-loadgen"), "run", "--scenario", scenario,
            "--target", f"127.0.0.1:{port}", "--seconds", str(seconds or args.seconds)]
    if tls:
        client = args.certs / "client"
        argv += ["--ca", str(client / "ca.crt")]
        if client_cert:
            argv += ["--cert", str(client / "tls.crt"), "--key", str(client / "tls.key")]
    argv += list(extra)
    before = cpu_ticks(proxy()) if proxy else (0, 0)
    t0 = time.monotonic()
    proc = subprocess.Popen(pinned(LOAD_CPU, argv), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    samples = []
    if proxy:
        while proc.poll() is None:
            samples.append(memory_kb(proxy()))
            time.sleep(0.2)
    out, err = proc.communicate()
    wall = time.monotonic() - t0
    if proc.returncode != 0:
        sys.exit(f"load generator failed ({scenario} on {port}): {err.strip()}")
    report = json.loads(out)
    if report["errors"]:
        print(f"  warning: {scenario} on {port}: {report['errors']} errors, first: {report.get('first_error')}",
              file=sys.stderr)
    if proxy:
        samples.append(memory_kb(proxy()))
        user, kernel = (after - b for after, b in zip(cpu_ticks(proxy()), before))
        report["cpu_pct"] = 100.0 * (user + kernel) / CLK_TCK / wall
        done = max(report["requests"], 1)
        report["user_us"] = 1e6 * user / CLK_TCK / done
        report["kernel_us"] = 1e6 * kernel / CLK_TCK / done
        report["rss_kb"] = max(rss for rss, _ in samples)
        report["anon_kb"] = max(anon for _, anon in samples)
    return report


def measure(args, contestant):
    """One repetition of every scenario against a freshly started contestant."""
    tls = contestant.name != "direct"
    port = PROXY if tls else UPSTREAM
    contestant.start()
    results = {}
    try:
        proxy = contestant.pids if contestant.pids() else None
        if proxy:
            # Idle: started, listening, one request served (so the certificate
            # and the upstream pool exist), then left alone.
            loadgen(args, "rate", port, tls, ["--rate", "10", "--connections", "1"], seconds=0.2)
            results["idle_rss_kb"], results["idle_anon_kb"] = memory_kb(proxy())
            results["idle_pss_kb"] = pss_kb(proxy())

        r = loadgen(args, "keepalive", port, tls, ["--connections", str(args.connections)], proxy=proxy)
        results["ka_rps"], results["ka_p50"], results["ka_p99"] = r["rate"], r["p50_us"], r["p99_us"]
        if proxy:
            # Near 100 % means the proxy's core is the limit; well below, the
            # load generator's core is.
            results["ka_cpu_pct"] = r["cpu_pct"]
            results["ka_user_us"], results["ka_kernel_us"] = r["user_us"], r["kernel_us"]

        r = loadgen(args, "rate", port, tls,
                    ["--rate", str(args.rate), "--connections", str(args.rate_connections)], proxy=proxy)
        results["rate_p50"], results["rate_p99"] = r["p50_us"], r["p99_us"]
        results["rate_p999"], results["rate_pacing_p99"] = r["p999_us"], r["pacing_p99_us"]
        results["rate_achieved"] = r["rate"]
        if proxy:
            results["rate_cpu_pct"], results["rate_rss_kb"], results["rate_anon_kb"] = (
                r["cpu_pct"], r["rss_kb"], r["anon_kb"])

        r = loadgen(args, "handshake", port, tls, ["--connections", str(args.handshake_concurrency)])
        results["hs_rate"], results["hs_p99"] = r["rate"], r["p99_us"]

        if tls:
            r = loadgen(args, "h2", port, tls,
                        ["--connections", str(args.h2_connections), "--streams", str(args.h2_streams)],
                        proxy=proxy)
            results["h2_rps"], results["h2_p99"] = r["rate"], r["p99_us"]
            if proxy:
                results["h2_user_us"], results["h2_kernel_us"] = r["user_us"], r["kernel_us"]
        results.update(measure_tcp(args, tls, proxy))
    finally:
        contestant.stop()
    return results


def measure_tcp(args, tls, proxy):
    """The L4 scenarios: 64-byte round trips on keep-alive connections, a new
    connection per round trip, and a bulk transfer (MB/s, and MB per second
    of the proxy's CPU time)."""
    port = PROXY_TCP if tls else UPSTREAM_TCP
    results = {}
    r = loadgen(args, "tcp", port, tls, ["--connections", str(args.connections)], proxy=proxy)
    results["tcp_rps"], results["tcp_p99"] = r["rate"], r["p99_us"]
    if proxy:
        results["tcp_user_us"], results["tcp_kernel_us"] = r["user_us"], r["kernel_us"]
    r = loadgen(args, "tcp-handshake", port, tls, ["--connections", str(args.handshake_concurrency)])
    results["tcp_hs"] = r["rate"]
    r = loadgen(args, "tcp-bulk", port, tls, ["--bytes", str(args.bulk_mb * 1_000_000)], proxy=proxy)
    results["bulk_mbps"] = r["rate"]
    if proxy and r["cpu_pct"] > 0:
        results["bulk_mb_per_cpu_s"] = r["rate"] / (r["cpu_pct"] / 100.0)
    return results


def callgrind_instructions(prefix):
    """Instructions executed, summed over the callgrind files of one run
    (one per process: nginx forks its worker)."""
    total = 0
    files = list(prefix.parent.glob(prefix.name + ".*"))
    for f in files:
        for line in f.read_text(errors="replace").splitlines():
            if line.startswith("summary:") or line.startswith("totals:"):
                total += int(line.split()[1])
                break
    if not total:
        sys.exit(f"callgrind wrote no totals to {prefix}.*: see the contestant's log in {prefix.parent}")
    return total


def instructions(args, kind):
    """User-space instructions the proxy executes per keep-alive request, per
    new connection (handshake + one request), per HTTP/2 request (4
    connections x 32 streams) and per L4 round trip, counted by valgrind's
    callgrind: the same on every machine and under any load, so it is what a
    change is judged on. Each figure is the difference between two runs that
    differ only in the number of requests, so start-up, the connections'
    set-up and shutdown cancel out. Kernel work (syscalls) is not counted."""
    results = {}
    for key, scenario, port, few, many, extra in (
            ("ka_instr", "keepalive", PROXY, 200, 2200, ["--connections", "4"]),
            ("hs_instr", "handshake", PROXY, 20, 220, ["--connections", "4"]),
            ("h2_instr", "h2", PROXY, 512, 4608, ["--connections", "4", "--streams", "32"]),
            ("tcp_instr", "tcp", PROXY_TCP, 200, 2200, ["--connections", "4"])):
        counts = []
        for n in (few, many):
            prefix = args.work / f"callgrind-{kind.name}-{scenario}-{n}"
            wrapper = ["valgrind", "--tool=callgrind", "--trace-children=yes", f"--callgrind-out-file={prefix}.%p"]
            c = kind(args.certs, args.work, wrapper)
            c.start()
            try:
                loadgen(args, scenario, port, True, [*extra, "--requests", str(n)])
            finally:
                c.stop(timeout=120)
            counts.append(callgrind_instructions(prefix))
        results[key] = (counts[1] - counts[0]) / (many - few)
    return results


def syscall_counts(path):
    """Calls per syscall from a `strace -c` summary."""
    counts = {}
    for line in Path(path).read_text().splitlines():
        f = line.split()
        if len(f) >= 5 and f[0][0].isdigit() and f[-1] != "total":
            counts[f[-1]] = counts.get(f[-1], 0) + int(f[3])
    return counts


def syscalls(args, kind):
    """System calls the proxy makes per keep-alive request, per HTTP/2 request
    and per L4 round trip, counted by `strace -c` attached to the proxy for a
    fixed number of requests on connections that are already open (and whose
    connections to the upstream exist): like instructions, the same on every
    machine. Returns the totals and, for the notes, the calls behind them."""
    results = {}
    for key, scenario, port, extra in (
            ("ka_syscalls", "keepalive", PROXY, ["--connections", str(args.connections)]),
            ("h2_syscalls", "h2", PROXY, ["--connections", str(args.h2_connections),
                                          "--streams", str(args.h2_streams)]),
            ("tcp_syscalls", "tcp", PROXY_TCP, ["--connections", str(args.connections)])):
        c = kind(args.certs, args.work)
        c.start()
        out = args.work / f"strace-{kind.name}-{scenario}.txt"
        try:
            loadgen(args, scenario, port, True, [*extra, "--requests", "2000"])
            argv = ["strace", "-c", "-f", "-o", str(out)]
            for pid in c.pids():
                argv += ["-p", str(pid)]
            tracer = subprocess.Popen(argv, stderr=subprocess.PIPE, text=True)
            # strace says it has attached on stderr, once per process.
            for _ in c.pids():
                tracer.stderr.readline()
            n = 20_000
            loadgen(args, scenario, port, True, [*extra, "--requests", str(n)])
            tracer.send_signal(signal.SIGINT)
            tracer.wait(timeout=30)
        finally:
            c.stop()
        counts = syscall_counts(out)
        results[key] = sum(counts.values()) / n
        top = sorted(counts.items(), key=lambda kv: -kv[1])[:4]
        results[key + "_top"] = ", ".join(f"{name} {calls / n:.2f}" for name, calls in top)
    return results


def admission_review():
    """An AdmissionReview for a realistic pod: the multi-container Deployment of
    the webhook's golden tests, as the API server would send its pod."""
    import yaml

    docs = yaml.safe_load_all((ROOT / "webhook/tests/golden/deployment-multi-container.yaml").read_text())
    deployment = next(d for d in docs if d and d.get("kind") == "Deployment")
    template = deployment["spec"]["template"]
    namespace = deployment["metadata"].get("namespace", "default")
    pod = {"apiVersion": "v1", "kind": "Pod",
           "metadata": dict(template.get("metadata", {}), namespace=namespace,
                            generateName=deployment["metadata"]["name"] + "-"),
           "spec": template["spec"]}
    return {
        "apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview",
        "request": {
            "uid": "5f1c1c3e-0000-4000-8000-000000000001",
            "kind": {"group": "", "version": "v1", "kind": "Pod"},
            "resource": {"group": "", "version": "v1", "resource": "pods"},
            "namespace": namespace, "operation": "CREATE",
            "userInfo": {"username": "system:serviceaccount:kube-system:replicaset-controller"},
            "object": pod, "dryRun": False,
        },
    }


def bench_webhook(args):
    body = args.work / "admission-review.json"
    body.write_text(json.dumps(admission_review()))
    proc = subprocess.Popen(
        pinned(PROXY_CPU, [binary("kube-mtls-webhook"), "--log-format", "json", "serve", "--standalone",
                           "--port", str(WEBHOOK), "--metrics-port", str(WEBHOOK_PLAIN),
                           "--tls-dir", str(args.certs / "server")]),
        stdout=subprocess.DEVNULL, stderr=open(args.work / "webhook.log", "ab"))
    try:
        wait_port(WEBHOOK, proc, "kube-mtls-webhook")
        # The benchmark must measure injections, not rejections: check one.
        ctx = ssl.create_default_context(cafile=str(args.certs / "server/ca.crt"))
        with socket.create_connection(("127.0.0.1", WEBHOOK)) as raw:
            with ctx.wrap_socket(raw, server_hostname="localhost") as tls:
                data = body.read_bytes()
                tls.sendall(b"POST /mutate HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\n"
                            b"Connection: close\r\nContent-Length: " + str(len(data)).encode() + b"\r\n\r\n" + data)
                reply = b""
                while chunk := tls.recv(65536):
                    reply += chunk
        answer = json.loads(reply.split(b"\r\n\r\n", 1)[1])
        if not answer["response"].get("allowed") or "patch" not in answer["response"]:
            sys.exit(f"the webhook did not inject the benchmark pod: {answer['response']}")
        runs = [loadgen(args, "keepalive", WEBHOOK, True,
                        ["--connections", "16", "--path", "/mutate", "--body", str(body),
                         "--content-type", "application/json"],
                        client_cert=False, proxy=lambda: [proc.pid])
                for _ in range(args.reps)]
        fixed = [loadgen(args, "rate", WEBHOOK, True,
                         ["--rate", str(args.webhook_rate), "--connections", "16", "--path", "/mutate",
                          "--body", str(body), "--content-type", "application/json"],
                         client_cert=False, proxy=lambda: [proc.pid])
                 for _ in range(args.reps)]
        return {
            "fixed_p50": statistics.median(r["p50_us"] for r in fixed),
            "fixed_p99": statistics.median(r["p99_us"] for r in fixed),
            "fixed_p999": statistics.median(r["p999_us"] for r in fixed),
            "fixed_rss_kb": max(r["rss_kb"] for r in fixed),
            "fixed_errors": sum(r["errors"] for r in fixed),
            "rps": statistics.median(r["rate"] for r in runs),
            "p50": statistics.median(r["p50_us"] for r in runs),
            "p99": statistics.median(r["p99_us"] for r in runs),
            "rss_kb": statistics.median(r["rss_kb"] for r in runs),
            "errors": sum(r["errors"] for r in runs),
            "pod_bytes": body.stat().st_size,
        }
    finally:
        proc.terminate()
        proc.wait()


ROWS = [
    # key, label, unit formatter, target (None: no target)
    ("ka_rps", "keep-alive throughput (req/s)", "{:,.0f}", "≥ 1.5× nginx, ≥ 1.3× HAProxy"),
    ("ka_p50", "keep-alive p50 (µs)", "{:,.0f}", None),
    ("ka_p99", "keep-alive p99 (µs)", "{:,.0f}", None),
    ("ka_cpu_pct", "keep-alive: proxy CPU (% of its core)", "{:.0f}", None),
    ("ka_instr", "instructions per keep-alive request", "{:,.0f}", None),
    ("ka_syscalls", "system calls per keep-alive request", "{:.2f}", None),
    ("ka_user_us", "keep-alive: proxy CPU per request, user space (µs)", "{:.2f}", None),
    ("ka_kernel_us", "keep-alive: proxy CPU per request, kernel (µs)", "{:.2f}", None),
    ("rate_p50", "1000 req/s: p50 (µs)", "{:,.0f}", None),
    ("rate_p99", "1000 req/s: p99 (µs)", "{:,.0f}", "≤ min(nginx, HAProxy)"),
    ("rate_p999", "1000 req/s: p99.9 (µs)", "{:,.0f}", None),
    ("rate_pacing_p99", "1000 req/s: load generator's pacing p99 (µs late)", "{:,.0f}", None),
    ("rate_cpu_pct", "1000 req/s: proxy CPU (%)", "{:.1f}", None),
    ("rate_rss_kb", "1000 req/s: RSS (MB)", "mb", "< 12 MB"),
    ("rate_anon_kb", "1000 req/s: private anon memory (MB)", "mb", None),
    ("idle_rss_kb", "idle RSS (MB)", "mb", "< 5 MB"),
    ("idle_pss_kb", "idle PSS (MB)", "mb", None),
    ("idle_anon_kb", "idle private anon memory (MB)", "mb", None),
    ("hs_rate", "new mTLS connection per request (handshakes/s)", "{:,.0f}", "≥ 1.3× nginx"),
    ("hs_p99", "handshake + request p99 (µs)", "{:,.0f}", None),
    ("hs_instr", "instructions per handshake + request", "{:,.0f}", None),
    ("h2_rps", "HTTP/2 multiplexed throughput (req/s)", "{:,.0f}", "≥ 1.3× HAProxy"),
    ("h2_p99", "HTTP/2 p99 (µs)", "{:,.0f}", None),
    ("h2_instr", "instructions per HTTP/2 request", "{:,.0f}", None),
    ("h2_syscalls", "system calls per HTTP/2 request", "{:.2f}", None),
    ("h2_user_us", "HTTP/2: proxy CPU per request, user space (µs)", "{:.2f}", None),
    ("h2_kernel_us", "HTTP/2: proxy CPU per request, kernel (µs)", "{:.2f}", None),
    ("tcp_rps", "L4: 64-byte round trips/s (keep-alive)", "{:,.0f}", "≥ 1.3× HAProxy"),
    ("tcp_p99", "L4: round trip p99 (µs)", "{:,.0f}", None),
    ("tcp_instr", "instructions per L4 round trip", "{:,.0f}", None),
    ("tcp_syscalls", "system calls per L4 round trip", "{:.2f}", None),
    ("tcp_user_us", "L4: proxy CPU per round trip, user space (µs)", "{:.2f}", None),
    ("tcp_kernel_us", "L4: proxy CPU per round trip, kernel (µs)", "{:.2f}", None),
    ("tcp_hs", "L4: new connections/s", "{:,.0f}", None),
    ("bulk_mbps", "L4: bulk transfer (MB/s)", "{:,.0f}", "≥ 1.3× HAProxy"),
    ("bulk_mb_per_cpu_s", "L4: bulk MB per proxy CPU-second", "{:,.0f}", None),
]


def fmt(value, spec):
    if value is None:
        return "–"
    if spec == "mb":
        return f"{value / 1024:.1f}"
    return spec.format(value)


def ratio(medians, key, other):
    ours, theirs = medians.get("kube-mtls", {}).get(key), medians.get(other, {}).get(key)
    return f"{ours / theirs:.2f}×" if ours is not None and theirs else "–"


def table(medians, names):
    lines = ["| scenario | " + " | ".join(names) + " | kube-mtls ÷ nginx | ÷ HAProxy | target |",
             "|---|" + "---:|" * len(names) + "---:|---:|---|"]
    for key, label, spec, target in ROWS:
        if all(medians[n].get(key) is None for n in names):
            continue
        cells = [fmt(medians[n].get(key), spec) for n in names]
        lines.append(f"| {label} | " + " | ".join(cells) +
                     f" | {ratio(medians, key, 'nginx')} | {ratio(medians, key, 'haproxy')} | {target or ''} |")
    return "\n".join(lines)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--reps", type=int, default=3, help="repetitions; figures are medians")
    parser.add_argument("--seconds", type=float, default=5.0, help="seconds per scenario")
    parser.add_argument("--connections", type=int, default=64, help="keep-alive connections")
    parser.add_argument("--rate", type=float, default=1000.0, help="requests/s of the fixed-rate scenario")
    parser.add_argument("--rate-connections", type=int, default=32)
    parser.add_argument("--handshake-concurrency", type=int, default=16)
    parser.add_argument("--h2-connections", type=int, default=4)
    parser.add_argument("--h2-streams", type=int, default=32)
    parser.add_argument("--bulk-mb", type=int, default=100, help="megabytes of the TCP bulk transfer")
    parser.add_argument("--webhook-rate", type=float, default=500.0, help="AdmissionReviews/s of the webhook's fixed-rate run")
    parser.add_argument("--no-instructions", action="store_true",
                        help="skip counting instructions (valgrind) and system calls (strace) per request; a few minutes")
    parser.add_argument("--only", default="direct,kube-mtls,nginx,haproxy",
                        help="comma-separated contestants")
    parser.add_argument("--no-webhook", action="store_true", help="skip the webhook benchmark")
    parser.add_argument("--json", type=Path, help="also write every raw figure here")
    args = parser.parse_args()
    if os.cpu_count() < 2:
        sys.exit("the benchmark pins the proxy and the load to separate cores: it needs at least 2 CPUs")

    with tempfile.TemporaryDirectory(prefix="kube-mtls-bench-") as tmp:
        args.work = Path(tmp)
        args.certs = args.work / "certs"
        subprocess.run([binary("kube-mtls-loadgen"), "gen-certs", str(args.certs)], check=True)
        upstream = subprocess.Popen(pinned(LOAD_CPU, [binary("kube-mtls-loadgen"), "upstream",
                                                      "--listen", f"127.0.0.1:{UPSTREAM}",
                                                      "--tcp-listen", f"127.0.0.1:{UPSTREAM_TCP}"]))
        try:
            wait_port(UPSTREAM, upstream, "upstream")
            wait_port(UPSTREAM_TCP, upstream, "TCP upstream")
            kinds = {c.name: c for c in (Direct, KubeMtls, Nginx, Haproxy)}
            names = [n.strip() for n in args.only.split(",") if n.strip()]
            unknown = [n for n in names if n not in kinds]
            if unknown:
                sys.exit(f"--only: unknown contestant(s) {unknown}; choose from {list(kinds)}")
            raw = {n: [] for n in names}
            for rep in range(args.reps):
                # Interleave contestants within each repetition so that drift in
                # the machine's speed spreads over all of them.
                for name in names:
                    print(f"rep {rep + 1}/{args.reps}: {name}", file=sys.stderr)
                    raw[name].append(measure(args, kinds[name](args.certs, args.work)))
            medians = {n: {k: statistics.median(r[k] for r in raw[n]) for k in raw[n][0]} for n in names}
            if not args.no_instructions:
                for name in names:
                    if name != "direct":
                        print(f"instructions per request: {name} (valgrind)", file=sys.stderr)
                        medians[name].update(instructions(args, kinds[name]))
                        print(f"system calls per request: {name} (strace)", file=sys.stderr)
                        medians[name].update(syscalls(args, kinds[name]))
            webhook = None if args.no_webhook else bench_webhook(args)
        finally:
            upstream.terminate()
            upstream.wait()

    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), "unknown CPU")
    print(f"\nkube-mtls benchmark: {cpu}; medians of {args.reps} × {args.seconds:g}s; proxy on CPU {PROXY_CPU}, "
          f"load generator and upstream on CPU {LOAD_CPU}\n")
    print(table(medians, names))
    tops = [(n, k, medians[n][k + "_top"]) for n in names for k in ("ka_syscalls", "h2_syscalls", "tcp_syscalls")
            if k + "_top" in medians[n]]
    if tops:
        print("\nsystem calls per request, the most frequent:")
        for name, key, top in tops:
            print(f"- {name}, {key.split('_')[0]}: {top}")
    if webhook:
        print(f"\nwebhook (AdmissionReview of a {webhook['pod_bytes']:,}-byte multi-container pod over HTTPS, "
              f"16 keep-alive connections): saturated {webhook['rps']:,.0f} reviews/s, p50 {webhook['p50']:,.0f} µs, "
              f"p99 {webhook['p99']:,.0f} µs, RSS {webhook['rss_kb'] / 1024:.1f} MB, errors {webhook['errors']}; "
              f"at {args.webhook_rate:,.0f} reviews/s: p50 {webhook['fixed_p50']:,.0f} µs, "
              f"p99 {webhook['fixed_p99']:,.0f} µs (target < 2,000), p99.9 {webhook['fixed_p999']:,.0f} µs, "
              f"peak RSS {webhook['fixed_rss_kb'] / 1024:.1f} MB, errors {webhook['fixed_errors']}")
    if args.json:
        args.json.write_text(json.dumps({"raw": raw, "medians": medians, "webhook": webhook}, indent=2))


if __name__ == "__main__":
    main()
