#!/usr/bin/env python3
"""Writes sidecar/symbol-order.txt: the sidecar's functions that run, hottest
first, for the linker to place together (see sidecar/build.rs).

The kernel maps a binary's pages 64 KiB around every page a process touches
(fault-around), so functions spread over the whole text make the whole text
resident. Listing the ones a sidecar runs lets the linker pack them: an idle
sidecar then keeps far less of its binary resident.

Runs the release build of the sidecar under valgrind's callgrind through
what a sidecar does in a pod: start-up, mTLS handshakes, HTTP/1.1 keep-alive
and HTTP/2 requests, an L4 port, and the admin port's probes and metrics. The
binary is stripped, so callgrind names addresses; the linker's map of that
same build (`--map`) names the functions there. Called by
scripts/symbol-order.sh, which builds both.
"""

import argparse
import bisect
import hashlib
import re
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import run  # noqa: E402  (the benchmark's contestants and load generator)

WORKLOAD = (
    ("keepalive", run.PROXY, ["--connections", "4", "--requests", "200"]),
    ("handshake", run.PROXY, ["--connections", "4", "--requests", "20"]),
    ("h2", run.PROXY, ["--connections", "2", "--streams", "8", "--requests", "200"]),
    ("tcp", run.PROXY_TCP, ["--connections", "4", "--requests", "200"]),
    ("tcp-handshake", run.PROXY_TCP, ["--connections", "2", "--requests", "10"]),
)


def stamp():
    """What the symbol names depend on besides the code: the crates, versions
    and features of the sidecar's own build (checked by
    scripts/check-generated.sh) and the compiler (said only). Only the
    sidecar's dependency tree counts, so a crate added elsewhere in the
    workspace leaves the list valid."""
    tree = subprocess.run(
        ["cargo", "tree", "--locked", "--offline", "-p", "kube-mtls-sidecar", "-e", "normal,build",
         "--prefix", "none", "-f", "{p} {f}"],
        cwd=run.ROOT, check=True, capture_output=True, text=True).stdout
    # Workspace crates print their path, which differs between checkouts.
    lines = sorted({re.sub(r" \(/[^)]*\)", "", line).replace(" (*)", "") for line in tree.splitlines()})
    digest = hashlib.sha256("\n".join(lines).encode()).hexdigest()
    return f"# sidecar dependency tree sha256 {digest}"


def compiler():
    rustc = subprocess.run(["rustc", "-V"], check=True, capture_output=True, text=True).stdout.strip()
    return f"# {rustc}"


def executed(files, binary):
    """Instructions executed at each address of `binary` (offsets into the
    file's address space), from callgrind files written with
    --dump-instr=yes --compress-strings=no --compress-pos=no. Addresses, not
    callgrind's functions: code reached by a tail call is counted where it is."""
    ran = {}
    for f in files:
        ours, after_call = False, False
        for line in f.read_text(errors="replace").splitlines():
            if line.startswith("ob="):
                ours = line[3:].strip() == binary
            elif line.startswith("calls="):
                # The cost line after `calls=` is the callee's, not this code's.
                after_call = True
            elif line.startswith("0x"):
                if after_call:
                    after_call = False
                    continue
                parts = line.split()
                if ours and len(parts) >= 3:
                    addr = int(parts[0], 16)
                    ran[addr] = ran.get(addr, 0) + int(parts[2])
    return ran


def functions(map_file):
    """(start, end, symbol) of every function in an lld map, sorted: one per
    `.text.<symbol>` input section (Rust and C built with function sections),
    and the symbols of plain `.text` sections (assembly) by name."""
    found = []
    plain = None
    for line in Path(map_file).read_text(errors="replace").splitlines():
        cols = line.split(None, 4)
        if len(cols) < 5 or not all(c.isalnum() for c in cols[:3]):
            continue
        try:
            start, size = int(cols[0], 16), int(cols[2], 16)
        except ValueError:
            continue
        rest = cols[4]
        if ":(.text." in rest and rest.endswith(")"):
            name = rest.rsplit(":(.text.", 1)[1][:-1]
            # Cold (and hot) code carries its temperature in the section name.
            for prefix in ("unlikely.", "hot.", "startup.", "exit.", "split."):
                name = name.removeprefix(prefix)
            found.append((start, start + size, name))
            plain = None
        elif rest.endswith(":(.text)"):
            plain = (start, start + size)
        elif plain and "::" not in rest and " " not in rest.strip() and plain[0] <= start < plain[1]:
            found.append((start, start + max(size, 1), rest.strip()))
    found.sort()
    return found


def names_of(addresses, table):
    """The function each executed address falls in, with its cost."""
    starts = [t[0] for t in table]
    for addr, cost in addresses.items():
        i = bisect.bisect_right(starts, addr) - 1
        if i >= 0 and addr < table[i][1]:
            yield table[i][2], cost


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=run.ROOT / "sidecar" / "symbol-order.txt")
    parser.add_argument("--map", type=Path, help="the linker map of the sidecar binary (lld -Map)")
    parser.add_argument("--print-stamp", action="store_true",
                        help="print the line that says which dependency tree of the sidecar the list was made for, and exit")
    args = parser.parse_args()
    if args.print_stamp:
        print(stamp())
        return
    if args.map is None:
        parser.error("--map is required: run scripts/symbol-order.sh, which makes it")
    with tempfile.TemporaryDirectory(prefix="kube-mtls-order-") as tmp:
        work = Path(tmp)
        certs = work / "certs"
        subprocess.run([run.binary("kube-mtls-loadgen"), "gen-certs", str(certs)], check=True)
        upstream = subprocess.Popen([run.binary("kube-mtls-loadgen"), "upstream",
                                     "--listen", f"127.0.0.1:{run.UPSTREAM}",
                                     "--tcp-listen", f"127.0.0.1:{run.UPSTREAM_TCP}"])
        try:
            run.wait_port(run.UPSTREAM, upstream, "upstream")
            wrapper = ["valgrind", "--tool=callgrind", "--dump-instr=yes", "--compress-strings=no",
                       "--compress-pos=no", f"--callgrind-out-file={work}/cg.%p"]
            sidecar = run.KubeMtls(certs, work, wrapper)
            sidecar.start()
            try:
                load = argparse.Namespace(certs=certs, seconds=1)
                for scenario, port, extra in WORKLOAD:
                    run.loadgen(load, scenario, port, True, extra)
                for path in ("/ready", "/live", "/metrics"):
                    subprocess.run(["curl", "-sf", "-o", "/dev/null",
                                    f"http://127.0.0.1:{run.SIDECAR_ADMIN}{path}"], check=True)
            finally:
                sidecar.stop(timeout=120)
        finally:
            upstream.terminate()
            upstream.wait()
        addresses = executed(list(work.glob("cg.*")), run.binary("kube-mtls-sidecar"))
    by_name = {}
    for name, cost in names_of(addresses, functions(args.map)):
        by_name[name] = by_name.get(name, 0) + cost
    names = sorted(by_name, key=lambda n: (-by_name[n], n))
    if len(names) < 500:
        sys.exit(f"only {len(names)} of {len(addresses)} addresses ran were found in {args.map}: "
                 "is it the map of this very binary?")
    header = [stamp(), compiler(), "# Generated by scripts/symbol-order.sh; see bench/symbol_order.py."]
    args.out.write_text("\n".join(header + names) + "\n")
    print(f"{args.out}: {len(names)} functions")


if __name__ == "__main__":
    main()
