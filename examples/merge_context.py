#!/usr/bin/env python3
"""One long context over two kvd processes, merged exactly with "return_lse".

Each process holds part of the context (here: tokens 0..n1-1 on the first,
n1..n-1 on the second). A query is sent to both with "return_lse": true; each
answers its part's attention o_r and, per query head, lse_r = log of its
softmax denominator. The client merges:
    L = log(sum_r exp(lse_r)),   o = sum_r exp(lse_r - L) * o_r
which is exactly attention over the whole context (a part that sees no token
answers lse = -inf, i.e. weight 0). This is how one context outgrows one
machine: the KV cache of each part lives where there is memory for it.

The check: a third session on the first process holds the whole context and
answers the same queries; the merged output must match it within --tol
(relative L2 error per query head, default 1e-5). Exit status 1 if not.

Python 3 standard library only. Usage:
    python3 examples/merge_context.py --kvd build/kvd            # starts two kvd
    python3 examples/merge_context.py --url http://127.0.0.1:8080 --url http://127.0.0.1:8081
The API key, if the servers need one, is read from KVD_API_KEY.
"""
import argparse
import math
import os
import random
import re
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "clients", "python"))
from kvd_client import KVD, b64_decode, b64_encode  # noqa: E402

HEADS, KV_HEADS, HEAD_DIM = 4, 2, 16


def start_kvd(path, log):
    """Starts kvd on an ephemeral loopback port; returns (process, url)."""
    proc = subprocess.Popen([path, "--host", "127.0.0.1", "--port", "0", "--memory", "64MiB"],
                            stderr=log, stdout=subprocess.DEVNULL)
    for _ in range(100):  # up to 10 s
        log.flush()
        with open(log.name) as f:
            m = re.search(r"listening on http://127\.0\.0\.1:(\d+)", f.read())
        if m:
            return proc, "http://127.0.0.1:" + m.group(1)
        if proc.poll() is not None:
            break
        time.sleep(0.1)
    proc.kill()
    raise SystemExit("merge_context: kvd did not start")


def step(client, sid, k=None, v=None, q=None):
    """One step (b64, so lse's -inf survives); returns (o, lse) for queries."""
    body = {"encoding": "b64"}
    if k is not None:
        body["k"], body["v"], body["m"] = b64_encode(k), b64_encode(v), len(k) // (KV_HEADS * HEAD_DIM)
    if q is not None:
        body["q"], body["return_lse"] = b64_encode(q), True
    r = client._request("POST", f"/v1/sessions/{sid}/step", body)
    if q is None:
        return None, None
    return b64_decode(r["o"]), b64_decode(r["lse"])


def merge(parts):
    """parts: [(o, lse)], o [m_q*HEADS*HEAD_DIM], lse [m_q*HEADS] -> merged o."""
    o0, lse0 = parts[0]
    out = [0.0] * len(o0)
    for h in range(len(lse0)):
        lses = [p[1][h] for p in parts]
        mx = max(lses)
        if mx == -math.inf:  # no part saw a token: o = 0
            continue
        big_l = mx + math.log(sum(math.exp(x - mx) for x in lses))
        for o, lse in parts:
            w = math.exp(lse[h] - big_l)
            for i in range(HEAD_DIM):
                out[h * HEAD_DIM + i] += w * o[h * HEAD_DIM + i]
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--kvd", help="path to a kvd binary: start two on ephemeral ports")
    ap.add_argument("--url", action="append", default=[], help="a running kvd (give two)")
    ap.add_argument("--tokens", type=int, default=300, help="context length")
    ap.add_argument("--queries", type=int, default=3)
    ap.add_argument("--tol", type=float, default=1e-5)
    args = ap.parse_args()
    procs, logs = [], []
    try:
        if args.kvd:
            for _ in range(2):
                log = tempfile.NamedTemporaryFile("w+", prefix="kvd-merge-", suffix=".log")
                logs.append(log)
                proc, url = start_kvd(args.kvd, log)
                procs.append(proc)
                args.url.append(url)
        if len(args.url) != 2:
            raise SystemExit("merge_context: give --kvd or two --url")
        key = os.environ.get("KVD_API_KEY")
        a, b = KVD(args.url[0], api_key=key), KVD(args.url[1], api_key=key)
        rng = random.Random(9)
        n, n1 = args.tokens, args.tokens * 3 // 5
        row = KV_HEADS * HEAD_DIM
        k = [rng.uniform(-1.5, 1.5) for _ in range(n * row)]
        v = [rng.uniform(-1, 1) for _ in range(n * row)]
        shape = dict(layers=1, heads=HEADS, kv_heads=KV_HEADS, head_dim=HEAD_DIM)
        part1, part2, whole = a.create(**shape)["id"], b.create(**shape)["id"], a.create(**shape)["id"]
        step(a, part1, k[:n1 * row], v[:n1 * row])
        step(b, part2, k[n1 * row:], v[n1 * row:])
        step(a, whole, k, v)
        worst = 0.0
        for _ in range(args.queries):
            q = [rng.uniform(-1.5, 1.5) for _ in range(HEADS * HEAD_DIM)]
            merged = merge([step(a, part1, q=q), step(b, part2, q=q)])
            exact, _ = step(a, whole, q=q)
            for h in range(HEADS):
                sl = slice(h * HEAD_DIM, (h + 1) * HEAD_DIM)
                err = math.sqrt(sum((x - y) ** 2 for x, y in zip(merged[sl], exact[sl])))
                ref = math.sqrt(sum(y * y for y in exact[sl]))
                worst = max(worst, err / ref if ref else err)
        for c, sid in ((a, part1), (b, part2), (a, whole)):
            c.delete(sid)
        ok = worst <= args.tol
        print(f"merge_context: {n} tokens split {n1}+{n - n1} over two kvd processes, "
              f"merged by lse vs one process holding all: worst relative error {worst:.3g} "
              f"(tol {args.tol:g}) {'ok' if ok else 'FAIL'}")
        return 0 if ok else 1
    finally:
        for p in procs:
            p.terminate()
            p.wait(timeout=30)
        for log in logs:
            log.close()


if __name__ == "__main__":
    sys.exit(main())
