#!/usr/bin/env python3
"""A tiny transformer decoder whose attention runs in kvd.

A decoder-only model with random weights from a fixed seed — 2 layers,
d_model 32, 4 query heads sharing 2 kv heads (GQA), head_dim 8, RoPE, RMSNorm,
a SiLU MLP, vocab 64, an untied output head — prefills a short prompt and then
generates tokens greedily. Everything but attention is computed here in pure
Python; each layer's new keys, values and queries go to kvd through
clients/python/kvd_client.py (one step per layer per token, the k/v/q sent as
[m, kv_heads, head_dim] / [m, heads, head_dim]), and kvd's output continues
the forward pass, as a model runner would use it.

With --check the same loop runs again with attention computed locally (exact,
in double precision) and the two runs are compared: the greedy tokens must be
identical and every attention output within --tol (default 1e-4 absolute; the
outputs are O(1), and kvd's f32 cache and f32 accumulation differ from double
by about 1e-6). Exit status 1 if not.

Python 3 standard library only. Usage:
    python3 examples/tiny_decoder.py [--url http://127.0.0.1:8080] [--api-key KEY]
        [--tokens 24] [--dtype f32] [--check] [--tol 1e-4]
"""
import argparse
import math
import os
import random
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "clients", "python"))
from kvd_client import KVD  # noqa: E402

LAYERS, D_MODEL, HEADS, KV_HEADS, HEAD_DIM, VOCAB, D_FF = 2, 32, 4, 2, 8, 64, 64
PROMPT = [3, 14, 15, 9, 26]


def matrix(rng, rows, cols):
    s = 1.0 / math.sqrt(cols)
    return [[rng.gauss(0, s) for _ in range(cols)] for _ in range(rows)]


def matvec(w, x):
    return [sum(wi * xi for wi, xi in zip(row, x)) for row in w]


def rmsnorm(x):
    r = 1.0 / math.sqrt(sum(e * e for e in x) / len(x) + 1e-6)
    return [e * r for e in x]


def rope(vec, pos):
    """Rotates each (2i, 2i+1) pair of one head by pos * 10000^(-2i/d)."""
    out = list(vec)
    for i in range(0, HEAD_DIM, 2):
        theta = pos * 10000.0 ** (-i / HEAD_DIM)
        c, s = math.cos(theta), math.sin(theta)
        out[i] = vec[i] * c - vec[i + 1] * s
        out[i + 1] = vec[i] * s + vec[i + 1] * c
    return out


class Model:
    def __init__(self, seed):
        rng = random.Random(seed)
        self.embed = matrix(rng, VOCAB, D_MODEL)
        self.layers = []
        for _ in range(LAYERS):
            self.layers.append({
                "wq": matrix(rng, HEADS * HEAD_DIM, D_MODEL),
                "wk": matrix(rng, KV_HEADS * HEAD_DIM, D_MODEL),
                "wv": matrix(rng, KV_HEADS * HEAD_DIM, D_MODEL),
                "wo": matrix(rng, D_MODEL, HEADS * HEAD_DIM),
                "w1": matrix(rng, D_FF, D_MODEL),
                "w2": matrix(rng, D_MODEL, D_FF),
            })
        self.head = matrix(rng, VOCAB, D_MODEL)


class LocalAttention:
    """Causal GQA attention over a cache kept here, in double precision."""

    def __init__(self):
        self.k = [[] for _ in range(LAYERS)]  # per layer: tokens of [kv_heads][head_dim]
        self.v = [[] for _ in range(LAYERS)]

    def __call__(self, layer, ks, vs, qs):
        m = len(ks)
        self.k[layer].extend(ks)
        self.v[layer].extend(vs)
        n = len(self.k[layer])
        scale = 1.0 / math.sqrt(HEAD_DIM)
        outs = []
        for i in range(m):  # query i is new token n - m + i and sees tokens 0..n-m+i
            visible = n - m + i + 1
            token_out = []
            for h in range(HEADS):
                g = h // (HEADS // KV_HEADS)
                q = qs[i][h]
                s = [scale * sum(a * b for a, b in zip(q, self.k[layer][j][g])) for j in range(visible)]
                mx = max(s)
                w = [math.exp(e - mx) for e in s]
                z = sum(w)
                o = [0.0] * HEAD_DIM
                for j in range(visible):
                    vj = self.v[layer][j][g]
                    for d in range(HEAD_DIM):
                        o[d] += w[j] / z * vj[d]
                token_out.append(o)
            outs.append(token_out)
        return outs


class KvdAttention:
    """The same attention, in a kvd session (one step per layer call)."""

    def __init__(self, client, dtype):
        self.kvd = client
        self.sid = client.create(layers=LAYERS, heads=HEADS, kv_heads=KV_HEADS, head_dim=HEAD_DIM,
                                 cache={"dtype": dtype})["id"]

    def __call__(self, layer, ks, vs, qs):
        # ks: [m][kv_heads][head_dim] nested lists: the client sends m with them.
        r = self.kvd.step(self.sid, layer=layer, k=ks, v=vs, q=qs)
        o = r["o"]
        m = len(qs)
        return [[o[(i * HEADS + h) * HEAD_DIM:(i * HEADS + h + 1) * HEAD_DIM] for h in range(HEADS)]
                for i in range(m)]

    def close(self):
        self.kvd.delete(self.sid)


def forward(model, tokens, start, attend, trace):
    """Runs tokens (at positions start..) through the model; returns the
    logits of the last one. trace collects every attention output."""
    xs = [list(model.embed[t]) for t in tokens]
    for li, w in enumerate(model.layers):
        hs = [rmsnorm(x) for x in xs]
        qs, ks, vs = [], [], []
        for i, h in enumerate(hs):
            pos = start + i
            q, k, v = matvec(w["wq"], h), matvec(w["wk"], h), matvec(w["wv"], h)
            qs.append([rope(q[a * HEAD_DIM:(a + 1) * HEAD_DIM], pos) for a in range(HEADS)])
            ks.append([rope(k[a * HEAD_DIM:(a + 1) * HEAD_DIM], pos) for a in range(KV_HEADS)])
            vs.append([v[a * HEAD_DIM:(a + 1) * HEAD_DIM] for a in range(KV_HEADS)])
        att = attend(li, ks, vs, qs)
        trace.append(att)
        for i in range(len(xs)):
            flat = [e for head in att[i] for e in head]
            xs[i] = [a + b for a, b in zip(xs[i], matvec(w["wo"], flat))]
            h = rmsnorm(xs[i])
            u = [e / (1.0 + math.exp(-e)) for e in matvec(w["w1"], h)]  # SiLU
            xs[i] = [a + b for a, b in zip(xs[i], matvec(w["w2"], u))]
    last = rmsnorm(xs[-1])
    return matvec(model.head, last)


def generate(model, attend, n_tokens):
    trace = []
    logits = forward(model, PROMPT, 0, attend, trace)
    out = []
    margin = math.inf  # the closest call between the best and second-best logit
    pos = len(PROMPT)
    for _ in range(n_tokens):
        ranked = sorted(range(VOCAB), key=lambda t: -logits[t])
        margin = min(margin, logits[ranked[0]] - logits[ranked[1]])
        out.append(ranked[0])
        logits = forward(model, [ranked[0]], pos, attend, trace)
        pos += 1
    return out, trace, margin


def max_diff(a, b):
    worst = 0.0
    for sa, sb in zip(a, b):
        for ta, tb in zip(sa, sb):
            for ha, hb in zip(ta, tb):
                for x, y in zip(ha, hb):
                    worst = max(worst, abs(x - y))
    return worst


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--url", default=os.environ.get("KVD_URL", "http://127.0.0.1:8080"))
    ap.add_argument("--api-key", default=os.environ.get("KVD_API_KEY"))
    ap.add_argument("--tokens", type=int, default=24)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--dtype", default="f32")
    ap.add_argument("--check", action="store_true")
    ap.add_argument("--tol", type=float, default=1e-4)
    args = ap.parse_args()

    model = Model(args.seed)
    with KVD(args.url, api_key=args.api_key) as client:
        remote = KvdAttention(client, args.dtype)
        try:
            tokens, trace, _ = generate(model, remote, args.tokens)
            stats = client.stats(remote.sid)
        finally:
            remote.close()
    print(f"kvd ({args.dtype}): prompt {PROMPT} -> {tokens}")
    print(f"kvd cache: {stats['tokens']} slots, {stats['bytes']} bytes, {stats['steps']} layer steps")
    if not args.check:
        return 0
    local_tokens, local_trace, margin = generate(model, LocalAttention(), args.tokens)
    diff = max_diff(trace, local_trace)
    print(f"local:      prompt {PROMPT} -> {local_tokens}")
    print(f"smallest top-1 / top-2 logit margin of the local run: {margin:.3g}")
    print(f"max |attention output difference| = {diff:.3g} (tolerance {args.tol:g})")
    ok = tokens == local_tokens and diff <= args.tol
    distinct = len(set(tokens))
    if distinct < 3:  # a degenerate model would prove little
        print(f"only {distinct} distinct tokens generated: the check is too weak")
        ok = False
    print("OK: greedy tokens identical" if ok else "MISMATCH")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
