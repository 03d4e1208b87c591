#!/usr/bin/env python3
"""kube-mtls soak: a long, steady run of the sidecar under rotation and restarts.

Why it exists: the benchmark (bench/run.py) and the test suite run for
seconds, so they cannot show slow leaks (memory, file descriptors), nor
failures that need certificate rotations and app restarts to happen *while*
traffic flows. This soak runs, by default for ten minutes:

* mixed traffic over mutual TLS at a moderate fixed rate: HTTP/1.1 and HTTP/2
  through one sidecar listener in front of the test app
  (`kube-mtls-test-app`, an HTTP/1.1 + h2c echo), and raw TCP through a
  `--tcp-ports` listener in front of a TCP echo;
* a new server certificate (same CA) every 30 s, written the way kubelet
  updates a mounted Secret (a new `..<gen>/` directory, then an atomic rename
  of the `..data` symlink);
* every ~2 minutes a SIGTERM of the app, restarted ~2 s later. HTTP requests
  answered 502 while the app is down (from the SIGTERM until 1 s after the app
  listens again) are counted apart as "app down"; every other failure counts.

Every 10 s it samples the sidecar's RSS (VmRSS) and open file descriptors and
at the end prints a table over time, totals, and PASS/FAIL:

* 0 failed requests (app-down 502s excepted);
* RSS at the end within +20 % of RSS after warm-up (first sample at >= 60 s,
  or a fifth of the run if shorter);
* open fds at the end within +10 of the count after warm-up;
* at least one certificate reload per rotation
  (kube_mtls_sidecar_certificate_reloads_total{result="ok"} on /metrics).

It is not a test and not part of `make test`: it needs minutes, Python's
`httpx[http2]` (`pip install 'httpx[http2]'`) and `openssl`. It uses the
release binaries if built (`cargo build --release -p kube-mtls-sidecar
-p kube-mtls-tests --bin kube-mtls-test-app`), otherwise the debug ones, and
says which. Usage: `python3 bench/soak.py [--duration 600]`.
"""

import argparse
import asyncio
import os
import re
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from run import wait_port  # noqa: E402  (one port wait for both bench scripts)

ROOT = Path(__file__).resolve().parent.parent
APP_PORT = 19180
ECHO_PORT = 19181
HTTP_LISTEN = 19443
TCP_LISTEN = 19444
ADMIN_PORT = 19020
INBOUND_PORT = 19006
SERVER_ID = "spiffe://cluster.local/ns/shop/sa/orders"
CLIENT_ID = "spiffe://cluster.local/ns/web/sa/front"


# ---------------------------------------------------------------- binaries

def binaries(prefer):
    """(profile, sidecar path, test-app path): release if both exist, else debug."""
    base = Path(os.environ.get("CARGO_TARGET_DIR", ROOT / "target"))
    order = [prefer] if prefer else ["release", "debug"]
    for profile in order:
        sidecar, app = base / profile / "kube-mtls-sidecar", base / profile / "kube-mtls-test-app"
        if sidecar.is_file() and app.is_file():
            return profile, str(sidecar), str(app)
    sys.exit("kube-mtls-sidecar and kube-mtls-test-app are not built: run `cargo build --release "
             "-p kube-mtls-sidecar -p kube-mtls-tests --bin kube-mtls-test-app`")


# ---------------------------------------------------------------- certificates

def openssl(*args, cwd):
    subprocess.run(["openssl", *args], cwd=cwd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def new_key(path, cwd):
    openssl("genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256", "-out", path, cwd=cwd)


def make_ca(pki):
    new_key("ca.key", pki)
    openssl("req", "-x509", "-new", "-key", "ca.key", "-subj", "/CN=kube-mtls soak CA", "-days", "2",
            "-addext", "basicConstraints=critical,CA:TRUE",
            "-addext", "keyUsage=critical,keyCertSign,cRLSign", "-out", "ca.crt", cwd=pki)


def make_leaf(pki, name, spiffe_id, serial, server):
    """Signs a fresh key for `spiffe_id`; returns (cert path, key path)."""
    new_key(f"{name}.key", pki)
    openssl("req", "-new", "-key", f"{name}.key", "-subj", f"/CN={name}", "-out", f"{name}.csr", cwd=pki)
    san = f"URI:{spiffe_id}" + (",DNS:localhost,IP:127.0.0.1" if server else "")
    (pki / f"{name}.ext").write_text(
        "basicConstraints=critical,CA:FALSE\n"
        "keyUsage=critical,digitalSignature\n"
        "extendedKeyUsage=serverAuth,clientAuth\n"
        f"subjectAltName={san}\n")
    openssl("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.crt", "-CAkey", "ca.key",
            "-set_serial", str(serial), "-days", "1", "-extfile", f"{name}.ext", "-out", f"{name}.crt", cwd=pki)
    return pki / f"{name}.crt", pki / f"{name}.key"


class CertDir:
    """A cert dir laid out as kubelet mounts a Secret, rotated the same way."""

    def __init__(self, pki, cert_dir):
        self.pki, self.dir, self.gen = pki, cert_dir, 0
        cert_dir.mkdir()
        self.rotate()
        for f in ("tls.crt", "tls.key", "ca.crt"):
            os.symlink(f"..data/{f}", cert_dir / f)

    def rotate(self):
        """A new server leaf in a new `..<gen>` dir, then an atomic `..data` swap."""
        self.gen += 1
        serial = 0x50AC0000 + self.gen
        crt, key = make_leaf(self.pki, f"server-{self.gen}", SERVER_ID, serial, server=True)
        gen_name = f"..soak_{self.gen:04d}"
        gen_dir = self.dir / gen_name
        gen_dir.mkdir()
        shutil.copy(crt, gen_dir / "tls.crt")
        shutil.copy(key, gen_dir / "tls.key")
        shutil.copy(self.pki / "ca.crt", gen_dir / "ca.crt")
        data = self.dir / "..data"
        old = os.readlink(data) if data.is_symlink() else None
        tmp = self.dir / "..data_tmp"
        os.symlink(gen_name, tmp)
        os.replace(tmp, data)
        if old:
            shutil.rmtree(self.dir / old)
        return serial


# ---------------------------------------------------------------- processes

def tcp_echo_main(port):
    """`soak.py --tcp-echo PORT`: a tiny TCP echo server (the TCP app)."""
    async def handle(reader, writer):
        try:
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
        except ConnectionError:
            pass
        finally:
            writer.close()

    async def main():
        server = await asyncio.start_server(handle, "127.0.0.1", port)
        async with server:
            await server.serve_forever()

    asyncio.run(main())


def proc_sample(pid):
    """(VmRSS kB, open fds) of a process."""
    rss = 0
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            rss = int(line.split()[1])
    return rss, len(os.listdir(f"/proc/{pid}/fd"))


def metric(name, labels=""):
    body = urllib.request.urlopen(f"http://127.0.0.1:{ADMIN_PORT}/metrics", timeout=5).read().decode()
    pattern = re.compile(r"^" + re.escape(name) + r"(\{[^}]*\})?\s+([0-9.eE+-]+)", re.M)
    total = 0.0
    for m in pattern.finditer(body):
        if labels in (m.group(1) or ""):
            total += float(m.group(2))
    return total


# ---------------------------------------------------------------- traffic

class Stats:
    def __init__(self):
        self.lock = threading.Lock()
        self.ok = {"http1": 0, "http2": 0, "tcp": 0}
        self.app_down_502 = 0
        self.failures = 0
        self.failure_examples = []
        self.serials = set()

    def add_ok(self, proto):
        with self.lock:
            self.ok[proto] += 1

    def fail(self, proto, what):
        with self.lock:
            self.failures += 1
            if len(self.failure_examples) < 10:
                self.failure_examples.append(f"{time.strftime('%H:%M:%S')} {proto}: {what}")


class AppWindow:
    """Tracks when the app is (or just was) down, to excuse 502s then."""

    def __init__(self):
        self.lock = threading.Lock()
        self.down_since = None  # monotonic time of the SIGTERM, while down
        self.grace_until = 0.0

    def down(self):
        with self.lock:
            self.down_since = time.monotonic()

    def up(self, grace=1.0):
        with self.lock:
            self.down_since = None
            self.grace_until = time.monotonic() + grace

    def excused(self, started):
        """True if a request started at `started` (or ending now) overlapped the window."""
        with self.lock:
            now = time.monotonic()
            return self.down_since is not None or now < self.grace_until or started < self.grace_until


def client_context(pki):
    ctx = ssl.create_default_context(cafile=str(pki / "ca.crt"))
    ctx.load_cert_chain(str(pki / "client.crt"), str(pki / "client.key"))
    return ctx


def paced(rate, stop):
    """Yields request numbers at `rate`/s until `stop` is set; never bursts to catch up."""
    interval, n, due = 1.0 / rate, 0, time.monotonic()
    while not stop.is_set():
        yield n
        n += 1
        due += interval
        delay = due - time.monotonic()
        if delay > 0:
            stop.wait(delay)
        else:
            due = time.monotonic()


def http_worker(proto, wid, rate, pki, stats, window, stop, churn=200):
    """Sequential requests over one keep-alive client, replaced every `churn` requests.
    Each client gets its own SSLContext: httpx sets ALPN on the context it is given."""
    import httpx
    url = f"https://127.0.0.1:{HTTP_LISTEN}"
    client = None
    for n in paced(rate, stop):
        if client is None or n % churn == 0:
            if client is not None:
                client.close()
            client = httpx.Client(verify=client_context(pki), http1=proto == "http1", http2=proto == "http2", timeout=10.0)
        path = f"/soak/{proto}/{wid}/{n}"
        started = time.monotonic()
        try:
            r = client.get(url + path)
        except Exception as e:  # noqa: BLE001 - every error is a failure to count
            stats.fail(proto, f"{type(e).__name__}: {e}")
            client.close()
            client = None
            continue
        want = "HTTP/1.1" if proto == "http1" else "HTTP/2"
        if r.status_code == 200 and r.http_version == want and f'"{path}"' in r.text:
            stats.add_ok(proto)
        elif r.status_code == 502 and window.excused(started):
            with stats.lock:
                stats.app_down_502 += 1
        else:
            stats.fail(proto, f"{r.status_code} {r.http_version} {r.text[:120]!r}")
    if client is not None:
        client.close()


def tcp_worker(wid, rate, ctx, stats, stop, churn=100):
    """Echo round trips over one mTLS connection, reconnecting every `churn` messages."""
    conn = None
    for n in paced(rate, stop):
        try:
            if conn is None or n % churn == 0:
                if conn is not None:
                    conn.close()
                raw = socket.create_connection(("127.0.0.1", TCP_LISTEN), timeout=10)
                conn = ctx.wrap_socket(raw, server_hostname="localhost")
                serial = conn.getpeercert().get("serialNumber")
                with stats.lock:
                    stats.serials.add(serial)
            msg = f"soak tcp {wid} {n} ".encode() * 8 + b"\n"
            conn.sendall(msg)
            got = b""
            while len(got) < len(msg):
                chunk = conn.recv(len(msg) - len(got))
                if not chunk:
                    raise ConnectionError("closed before the echo")
                got += chunk
            if got != msg:
                raise ValueError("echo mismatch")
            stats.add_ok("tcp")
        except Exception as e:  # noqa: BLE001
            stats.fail("tcp", f"{type(e).__name__}: {e}")
            if conn is not None:
                conn.close()
            conn = None
    if conn is not None:
        conn.close()


# ---------------------------------------------------------------- main

def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--duration", type=float, default=600.0, help="seconds of traffic (default 600)")
    parser.add_argument("--rate", type=float, default=200.0, help="total requests/s over all protocols")
    parser.add_argument("--rotate-every", type=float, default=30.0, help="seconds between certificate rotations")
    parser.add_argument("--restart-every", type=float, default=120.0, help="seconds between app SIGTERMs")
    parser.add_argument("--app-down", type=float, default=2.0, help="seconds the app stays down")
    parser.add_argument("--sample-every", type=float, default=10.0, help="seconds between RSS/fd samples")
    parser.add_argument("--profile", choices=["release", "debug"], help="binaries to use (default: release if built)")
    parser.add_argument("--tcp-echo", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.tcp_echo:
        return tcp_echo_main(args.tcp_echo)
    try:
        import httpx  # noqa: F401
        import h2  # noqa: F401
    except ImportError:
        sys.exit("the soak needs httpx with HTTP/2: pip install 'httpx[http2]'")

    profile, sidecar_bin, app_bin = binaries(args.profile)
    warmup = min(60.0, args.duration / 5)
    with tempfile.TemporaryDirectory(prefix="kube-mtls-soak-") as tmp:
        work = Path(tmp)
        pki = work / "pki"
        pki.mkdir()
        make_ca(pki)
        make_leaf(pki, "client", CLIENT_ID, 0xC11E17, server=False)
        certs = CertDir(pki, work / "certs")
        procs = []

        def start_app():
            p = subprocess.Popen([app_bin, str(APP_PORT)], stdout=open(work / "app.log", "ab"),
                                 stderr=subprocess.STDOUT)
            wait_port(APP_PORT, p, "kube-mtls-test-app")
            return p

        echo = subprocess.Popen([sys.executable, __file__, "--tcp-echo", str(ECHO_PORT)])
        procs.append(echo)
        app = start_app()
        sidecar_log = work / "sidecar.log"
        sidecar = subprocess.Popen(
            [sidecar_bin, "--cert-dir", str(certs.dir),
             "--listen", f"{HTTP_LISTEN}:{APP_PORT},{TCP_LISTEN}:{ECHO_PORT}",
             "--tcp-ports", str(ECHO_PORT), "--inbound-port", str(INBOUND_PORT), "--outbound-port", "0",
             "--admin-port", str(ADMIN_PORT), "--log-format", "json", "--log-level", "info"],
            stdout=subprocess.DEVNULL, stderr=open(sidecar_log, "ab"))
        procs.append(sidecar)
        try:
            wait_port(ECHO_PORT, echo, "tcp echo")
            wait_port(HTTP_LISTEN, sidecar, "kube-mtls-sidecar")
            wait_port(TCP_LISTEN, sidecar, "kube-mtls-sidecar")
            print(f"soak: {profile} binaries ({sidecar_bin}), {args.duration:g}s, {args.rate:g} req/s total, "
                  f"rotation every {args.rotate_every:g}s, app SIGTERM every {args.restart_every:g}s; "
                  f"work dir {work}", file=sys.stderr)

            stats, window, stop = Stats(), AppWindow(), threading.Event()
            ctx = client_context(pki)
            # 40 % HTTP/1.1, 40 % HTTP/2, 20 % TCP; a few workers each so one
            # slow request does not stall a protocol's whole share.
            plan = [("http1", 4, 0.4), ("http2", 4, 0.4), ("tcp", 2, 0.2)]
            threads = []
            for proto, workers, share in plan:
                per = args.rate * share / workers
                for w in range(workers):
                    if proto == "tcp":
                        t = threading.Thread(target=tcp_worker, args=(w, per, ctx, stats, stop), daemon=True)
                    else:
                        t = threading.Thread(target=http_worker, args=(proto, w, per, pki, stats, window, stop),
                                             daemon=True)
                    threads.append(t)
                    t.start()

            t0 = time.monotonic()
            next_rotate, next_restart, next_sample = args.rotate_every, args.restart_every, 0.0
            rotations = restarts = 0
            restart_at = None
            samples = []  # (t, rss kB, fds, reloads, ok total, failures, app-down 502s)
            while True:
                now = time.monotonic() - t0
                if sidecar.poll() is not None:
                    stats.fail("sidecar", f"exited with {sidecar.returncode}")
                    break
                if now >= next_sample:
                    rss, fds = proc_sample(sidecar.pid)
                    reloads = metric("kube_mtls_sidecar_certificate_reloads_total", 'result="ok"')
                    with stats.lock:
                        samples.append((now, rss, fds, reloads, sum(stats.ok.values()), stats.failures,
                                        stats.app_down_502))
                    next_sample += args.sample_every
                if now >= args.duration:
                    break
                if now >= next_rotate:
                    certs.rotate()
                    rotations += 1
                    next_rotate += args.rotate_every
                if restart_at is None and now >= next_restart and now + args.app_down + 5 < args.duration:
                    window.down()
                    app.send_signal(signal.SIGTERM)
                    restart_at = now + args.app_down
                    next_restart += args.restart_every
                if restart_at is not None and now >= restart_at:
                    try:
                        app.wait(timeout=10)
                    except subprocess.TimeoutExpired:
                        stats.fail("app", "did not exit within 10s of SIGTERM")
                        app.kill()
                        app.wait()
                    app = start_app()
                    window.up()
                    restarts += 1
                    restart_at = None
                time.sleep(0.05)

            stop.set()
            for t in threads:
                t.join(timeout=15)
            time.sleep(1.5)  # let a reload from the last rotation land
            reloads = metric("kube_mtls_sidecar_certificate_reloads_total", 'result="ok"')
            refused = metric("kube_mtls_sidecar_certificate_reloads_total", 'result="refused"')
            sidecar.send_signal(signal.SIGTERM)
            try:
                sidecar_rc = sidecar.wait(timeout=30)
            except subprocess.TimeoutExpired:
                sidecar.kill()
                sidecar_rc = "killed after 30s"
            app.send_signal(signal.SIGTERM)
            app.wait(timeout=10)
        finally:
            for p in procs + [app]:
                if p.poll() is None:
                    p.kill()
                    p.wait()

        report(args, profile, stats, samples, warmup, rotations, restarts, reloads, refused, sidecar_rc,
               sidecar_log)


def report(args, profile, stats, samples, warmup, rotations, restarts, reloads, refused, sidecar_rc, sidecar_log):
    errors_logged = sum(1 for line in sidecar_log.read_text(errors="replace").splitlines()
                        if '"level":"ERROR"' in line or '"level":"error"' in line)
    print(f"\nkube-mtls soak ({profile} binaries): {args.duration:g}s, {args.rate:g} req/s target, "
          f"{rotations} rotations, {restarts} app restarts\n")
    print("| t (s) | sidecar RSS (MB) | open fds | cert reloads ok | requests ok | failures | app-down 502s |")
    print("|---:|---:|---:|---:|---:|---:|---:|")
    for t, rss, fds, rl, ok, fail, down in samples:
        print(f"| {t:.0f} | {rss / 1024:.1f} | {fds} | {rl:.0f} | {ok} | {fail} | {down} |")
    total_ok = sum(stats.ok.values())
    print()
    print(f"requests ok by protocol: HTTP/1.1 {stats.ok['http1']}, HTTP/2 {stats.ok['http2']}, "
          f"TCP {stats.ok['tcp']} (total {total_ok}, {total_ok / args.duration:.0f}/s)")
    print(f"failures (excluding app-down 502s): {stats.failures}")
    for example in stats.failure_examples:
        print(f"  {example}")
    print(f"app-down 502s: {stats.app_down_502}")
    print(f"server certificate serials seen by TCP clients: {len(stats.serials)} (of {rotations + 1} issued)")
    print(f"certificate reloads: ok {reloads:.0f}, refused {refused:.0f} (rotations: {rotations})")
    print(f"sidecar exit after SIGTERM: {sidecar_rc}; ERROR lines in its log: {errors_logged}")

    after = [s for s in samples if s[0] >= warmup] or samples[-1:]
    base = after[0]
    rss = [s[1] for s in samples]
    fds = [s[2] for s in samples]
    last = samples[-1]
    print(f"RSS (MB): first {rss[0] / 1024:.1f}, after warm-up (t={base[0]:.0f}s) {base[1] / 1024:.1f}, "
          f"last {last[1] / 1024:.1f}, max {max(rss) / 1024:.1f}")
    print(f"open fds: first {fds[0]}, after warm-up {base[2]}, last {last[2]}, max {max(fds)}")

    checks = [
        ("0 failed requests", stats.failures == 0),
        ("RSS last <= 1.2 x after warm-up", last[1] <= base[1] * 1.2),
        ("fds last <= after warm-up + 10", last[2] <= base[2] + 10),
        ("a certificate reload per rotation", reloads >= rotations and refused == 0),
        ("sidecar exited 0 on SIGTERM", sidecar_rc == 0),
    ]
    for name, ok in checks:
        print(f"  {'ok  ' if ok else 'FAIL'} {name}")
    verdict = all(ok for _, ok in checks)
    print(f"\n{'PASS' if verdict else 'FAIL'}")
    sys.exit(0 if verdict else 1)


if __name__ == "__main__":
    main()
