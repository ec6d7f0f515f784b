#!/usr/bin/env python3
"""Drive kvd through a VAR (visual autoregressive, next-scale) decode.

VAR (Tian et al. 2024) generates an image as token maps of growing size,
1x1, 2x2, ..., 16x16 (scales 1,2,3,4,5,6,8,10,13,16: 680 tokens). Each scale
is one kvd step with mask "block": its h*w new tokens attend to each other and
to every earlier scale. The script runs the schedule for standard attention and
for tensor attention with four caches and with two caches, and prints the
cache bytes after each scale, so the memory bounds of the VAR and tensor
attention papers (Chen et al. 2025: Omega(n^2 d) for the two-cache layout) can
be read off real numbers: the two-cache grows with the square of the tokens.

Python 3 standard library only. Usage:
    python3 examples/var_schedule.py [--url http://127.0.0.1:8080] [--head-dim 16]
"""
import argparse
import json
import random
import struct
import base64
import urllib.error
import urllib.request

SCALES = [1, 2, 3, 4, 5, 6, 8, 10, 13, 16]


def call(url, method, path, body=None):
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(url + path, data=data, method=method,
                                 headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req) as resp:
            return json.load(resp)
    except urllib.error.HTTPError as err:
        raise SystemExit(f"{method} {path}: {err.code} {err.read().decode()}")


def b64(values):
    """Tensors travel as "b64:" + base64 of little-endian f32 (the fast path)."""
    return "b64:" + base64.b64encode(struct.pack(f"<{len(values)}f", *values)).decode()


def run(url, label, create, head_dim, heads, seed):
    rng = random.Random(seed)
    sid = call(url, "POST", "/v1/sessions", create)["id"]
    tensor = create.get("attention") == "tensor"
    names = ["k1", "k2", "v1", "v2"] if tensor else ["k", "v"]
    rows = []
    tokens = 0
    for side in SCALES:
        m = side * side
        body = {name: b64([rng.gauss(0, 1) for _ in range(m * head_dim)]) for name in names}
        body["q"] = b64([rng.gauss(0, 1) for _ in range(m * heads * head_dim)])
        body["mask"] = "block"
        body["encoding"] = "b64"
        call(url, "POST", f"/v1/sessions/{sid}/step", body)
        tokens += m
        stats = call(url, "GET", f"/v1/sessions/{sid}")
        rows.append((side, tokens, stats["bytes"], stats.get("pair_rows", 0)))
    scaling = stats["memory_scaling"]
    call(url, "DELETE", f"/v1/sessions/{sid}")
    print(f"\n{label} ({scaling}):")
    print(f"{'scale':>6} {'tokens':>7} {'cache bytes':>12} {'pair rows':>10} {'bytes/token':>12}")
    for side, n, nbytes, pairs in rows:
        print(f"{side:>4}x{side:<1} {n:>7} {nbytes:>12} {pairs:>10} {nbytes / n:>12.1f}")
    return rows


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--url", default="http://127.0.0.1:8080")
    ap.add_argument("--head-dim", type=int, default=16)
    ap.add_argument("--heads", type=int, default=1)
    args = ap.parse_args()
    shape = {"layers": 1, "heads": args.heads, "kv_heads": 1, "head_dim": args.head_dim}
    runs = [
        ("standard attention", dict(shape)),
        ("tensor attention, four caches", dict(shape, attention="tensor", tensor_cache="four")),
        ("tensor attention, two caches", dict(shape, attention="tensor", tensor_cache="two")),
    ]
    results = {}
    for label, create in runs:
        results[label] = run(args.url, label, create, args.head_dim, args.heads, seed=1)
    # From the 4x4 scale on (earlier ones fit in one page, so they show page
    # slack, not growth): O(n d) bytes grow like the tokens, O(n^2 d) like
    # their square.
    base = 3
    n0, n1 = results[runs[0][0]][base][1], results[runs[0][0]][-1][1]
    print(f"\nfrom {n0} to {n1} tokens (x{n1 / n0:.1f}; squared x{(n1 / n0) ** 2:.0f}) the cache grew:")
    for label, rows in results.items():
        print(f"  {label:<32} x{rows[-1][2] / rows[base][2]:.1f}  ({rows[base][2]} -> {rows[-1][2]} bytes)")


if __name__ == "__main__":
    main()
