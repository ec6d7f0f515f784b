#!/usr/bin/env python3
"""tests/fuzz/make_seeds.py — writes the seed corpora of tests/fuzz/corpus/<target>/
(committed; rerun after changing a seed here). Each seed is a small, valid or
deliberately broken input in the target's format (see each fuzz_<target>.c).
The restore corpus's other seeds are snapshots kvd wrote (committed as they are);
its subgen seeds are written here, field by field, in the version 3 format."""
import base64, hashlib, json, os, struct, sys

HERE = os.path.dirname(os.path.abspath(__file__))
ID1 = "01" * 16  # the first session an input creates (tests/fuzz/support.h)
ID2 = "02" * 16


def b64(xs):
    return "b64:" + base64.b64encode(struct.pack("<%df" % len(xs), *xs)).decode()


def req(method, path, body=None, headers=(), chunked=False):
    h = ["%s %s HTTP/1.1" % (method, path), "Host: kvd"] + list(headers)
    if body is None:
        return ("\r\n".join(h) + "\r\n\r\n").encode()
    b = body.encode() if isinstance(body, str) else body
    h.append("Content-Type: application/json")
    if chunked:
        h.append("Transfer-Encoding: chunked")
        mid = len(b) // 2
        parts = [b[:mid], b[mid:]]
        enc = b"".join(b"%x\r\n" % len(p) + p + b"\r\n" for p in parts if p) + b"0\r\n\r\n"
        return ("\r\n".join(h) + "\r\n\r\n").encode() + enc
    h.append("Content-Length: %d" % len(b))
    return ("\r\n".join(h) + "\r\n\r\n").encode() + b


CREATE = json.dumps({"layers": 1, "heads": 2, "kv_heads": 1, "head_dim": 4})
CREATE_EVICT = json.dumps({"layers": 1, "heads": 2, "kv_heads": 1, "head_dim": 4, "shadow": True,
                           "cache": {"dtype": "int8", "eviction": "h2o", "budget": 4, "sink": 1}})
STEP_JSON = json.dumps({"layer": 0, "k": [1, 0, 0, 0, 0, 1, 0, 0], "v": [1, 2, 3, 4, 5, 6, 7, 8],
                        "q": [1, 0, 0, 0, 0, 1, 0, 0, 1, 0, 0, 0, 0, 1, 0, 0]})
STEP_B64 = json.dumps({"k": b64([1, 0, 0, 0]), "v": b64([1, 0, 0, 0]),
                       "q": b64([1, 0, 0, 0, 0, 1, 0, 0]), "encoding": "b64"})
STEP_MULTI = json.dumps({"steps": [{"layer": 0, "k": [[[1, 2, 3, 4]]], "v": [[[1, 1, 1, 1]]], "m": 1},
                                   {"layer": 0, "q": [[1, 0, 0, 0, 0, 1, 0, 0]], "mask": "block"}]})
CREATE_TENSOR = json.dumps({"attention": "tensor", "tensor_cache": "two", "heads": 2, "kv_heads": 1, "head_dim": 4})
UNKNOWN = "ff" * 16


def item(session, **entry):
    """One POST /v1/batch item: a step entry plus its "session"."""
    return dict({"session": session}, **entry)


# Batches over the sessions CREATE (ID1) and CREATE_EVICT (ID2) made: kv rows of
# 1 x 4, query rows of 2 x 4. Items of one session run in order, sessions in parallel.
BATCH_JSON = json.dumps({"steps": [
    item(ID1, layer=0, k=[1, 0, 0, 0, 0, 1, 0, 0], v=[1, 2, 3, 4, 5, 6, 7, 8], q=[1, 0, 0, 0, 0, 1, 0, 0] * 2),
    item(ID2, k=[[[0.5, 0.25, 0, 1]]] * 3, v=[[[1, 1, 1, 1]]] * 3, q=[[[1, 0, 0, 0], [0, 1, 0, 0]]], mask="block"),
    item(ID1, q=[[0, 0, 1, 0, 0, 0, 0, 1]], return_lse=True)]})
BATCH_B64 = json.dumps({"encoding": "b64", "steps": [
    item(ID2, k=b64([1, 0, 0, 0]), v=b64([2, 0, 0, 0]), q=b64([1, 0, 0, 0, 0, 1, 0, 0])),
    item(ID1, k=b64([0, 1, 0, 0, 0, 0, 1, 0]), v=b64([1] * 8), q=b64([0.5] * 16), m=2),
    item(ID2, k=b64([0, 0, 0, 1]), v=b64([0, 0, 0, 3]), q=b64([0, 0, 0, 1, 0, 0, 1, 0]))]})
# One of each kind of item a batch answers on its own, between two good ones.
BATCH_BAD_ITEMS = json.dumps({"steps": [
    item(ID1, k=[1, 0, 0, 0], v=[1, 1, 1, 1], q=[1, 0, 0, 0, 0, 1, 0, 0]),
    item(UNKNOWN, k=[1, 0, 0, 0], v=[1, 1, 1, 1], q=[1] * 8),     # 404
    42,                                                             # not an object
    {"layer": 0, "k": [1, 0, 0, 0], "v": [1, 1, 1, 1]},             # no session
    item(7, q=[1] * 8),                                             # session not a string
    item(ID1, steps=[{"q": [1] * 8}]),                              # "steps" inside an item
    item(ID1, encoding="b64", q=b64([1] * 8)),                      # "encoding" inside an item
    item(ID1, k=[1, 0, 0], v=[1, 1, 1, 1], q=[1] * 8),              # k a number short: 400
    item(ID1, layer=5, q=[1] * 8),                                  # no such layer
    item(ID1, q=[1] * 8, mask="causal"),                            # causal needs m_q <= m
    item(ID1, k="b64:!!", v=[1] * 4, q=[1] * 8),                    # bad b64
    item(ID2, k=[1e39, 0, 0, 0], v=[1] * 4, q=[1] * 8),             # not a finite f32
    item(ID1, k=[0, 0, 0, 1], v=[2, 2, 2, 2], q=[0, 0, 0, 1] * 2)]})
BATCH_TENSOR = json.dumps({"steps": [
    item(ID1, k1=[1, 2, 3, 4], k2=[1, 1, 1, 1], v1=[0, 1, 0, 1], v2=[2, 2, 2, 2], q=[1] * 8),
    item(ID2, k=[1, 0, 0, 0], v=[1, 1, 1, 1], q=[1] * 8),
    item(ID1, k1=[[1, 0, 0, 0]] * 2, k2=[[0, 1, 0, 0]] * 2, v1=[[1] * 4] * 2, v2=[[2] * 4] * 2, q=[[1] * 8] * 2)]})


def http_seeds():
    s = {}
    s["create"] = req("POST", "/v1/sessions", CREATE)
    s["create_step_json"] = req("POST", "/v1/sessions", CREATE) + req("POST", "/v1/sessions/%s/step" % ID1, STEP_JSON)
    s["create_step_b64"] = req("POST", "/v1/sessions", CREATE) + req("POST", "/v1/sessions/%s/step" % ID1, STEP_B64)
    s["pipelined"] = (req("POST", "/v1/sessions", CREATE_EVICT) + req("POST", "/v1/sessions/%s/step" % ID1, STEP_JSON)
                      + req("POST", "/v1/sessions/%s/step" % ID1, STEP_MULTI) + req("GET", "/v1/sessions/" + ID1)
                      + req("POST", "/v1/sessions/%s/fork" % ID1, "{}") + req("POST", "/v1/sessions/%s/step" % ID2, STEP_B64)
                      + req("GET", "/v1/sessions?limit=1") + req("GET", "/v1/sessions?limit=5&after=" + ID1)
                      + req("DELETE", "/v1/sessions/" + ID1) + req("GET", "/metrics") + req("GET", "/readyz")
                      + req("GET", "/healthz") + req("GET", "/v1/info"))
    s["chunked"] = (req("POST", "/v1/sessions", CREATE, chunked=True)
                    + req("POST", "/v1/sessions/%s/step" % ID1, STEP_JSON, chunked=True))
    s["bad_requests"] = (req("PUT", "/v1/sessions") + req("GET", "/nope") + req("POST", "/v1/sessions", "{\"layers\":0}")
                         + req("POST", "/v1/sessions/%s/step" % ID1, "{") + req("GET", "/v1/sessions/zz/snapshot")
                         + req("POST", "/v1/sessions/restore", "x") + req("POST", "/v1/batch", "{}")
                         + b"GET / HTTP/1.1\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello")
    s["garbage"] = b"\x00\x01GARBAGE / HTTP/9.9\r\n\r\n"
    s["smuggle"] = b"POST /v1/sessions HTTP/1.1\r\nTransfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n0\r\n\r\n"
    s["auth"] = (req("POST", "/v1/sessions", CREATE, headers=["Authorization: Bearer fuzzkey"])
                 + req("GET", "/v1/sessions/" + ID1, headers=["Authorization: Bearer wrong"])
                 + req("GET", "/metrics"))
    two = req("POST", "/v1/sessions", CREATE) + req("POST", "/v1/sessions", CREATE_EVICT)
    s["batch_json"] = two + req("POST", "/v1/batch", BATCH_JSON) + req("GET", "/v1/sessions/" + ID2)
    s["batch_b64"] = two + req("POST", "/v1/batch", BATCH_B64, chunked=True) + req("GET", "/metrics")
    s["batch_bad_items"] = two + req("POST", "/v1/batch", BATCH_BAD_ITEMS)
    s["batch_tensor"] = (req("POST", "/v1/sessions", CREATE_TENSOR) + req("POST", "/v1/sessions", CREATE)
                         + req("POST", "/v1/batch", BATCH_TENSOR))
    # A batch between a session's other requests (its items wait for the step before
    # them; the fork and delete wait for the batch), then bodies refused whole.
    s["batch_queued"] = (two + req("POST", "/v1/sessions/%s/step" % ID1, STEP_JSON) + req("POST", "/v1/batch", BATCH_JSON)
                         + req("POST", "/v1/sessions/%s/fork" % ID1, "{}") + req("DELETE", "/v1/sessions/" + ID2)
                         + req("POST", "/v1/batch", BATCH_B64))
    s["batch_bad_bodies"] = b"".join(req("POST", "/v1/batch", b) for b in [
        "{\"steps\":[]}", "{\"steps\":{}}", "[]", "{\"steps\":[{\"session\":\"%s\"}],\"x\":1}" % ID1,
        "{\"encoding\":\"hex\",\"steps\":[{\"session\":\"%s\"}]}" % ID1,
        "{\"steps\":[1],\"steps\":[2]}", "{\"steps\":[{\"session\":\"" + ID1 + "\",\"q\":[1,2"])
    s["http10_close"] = b"GET /healthz HTTP/1.0\r\n\r\n" + req("GET", "/healthz", headers=["Connection: close"])
    # header byte: flags, split1, split2 (fuzz_http.c)
    flags = {"auth": 0x01 | 0x40, "pipelined": 0x04 | 0x10, "chunked": 0x20, "create_step_b64": 0x08 | 0x02,
             "batch_queued": 0x04, "batch_b64": 0x02 | 0x20}
    return {k: bytes([flags.get(k, 0), 60, 160]) + v for k, v in s.items()}


def create_seeds():
    bodies = [
        {},
        {"layers": 2, "heads": 8, "kv_heads": 2, "head_dim": 64, "scale": 0.125, "seed": 42, "ttl_seconds": 60},
        {"attention": "tensor", "tensor_cache": "two", "heads": 2, "head_dim": 4},
        {"attention": "tensor", "tensor_cache": "four", "window": 8, "heads": 2, "head_dim": 4},
        {"cache": {"dtype": "kivi2", "group": 32, "residual": 64, "eviction": "recency", "budget": 100, "sink": 4}},
        {"cache": {"dtype": "int4", "group": 16, "eviction": "l2norm", "budget": 8, "sink": 2, "recent": 2}},
        {"shadow": True, "cache": {"dtype": "f16", "eviction": "h2o", "budget": 16}},
        {"cache": {"eviction": "subgen", "delta": 0.25, "cluster_samples": 8}},
        {"layers": 1, "heads": 3, "kv_heads": 2},
        {"head_dim": 4096},
    ]
    s = {"body%02d" % i: json.dumps(b).encode() for i, b in enumerate(bodies)}
    s["dup_key"] = b'{"layers":1,"layers":2}'
    s["leading_zero"] = b'{"layers":01}'
    s["unicode"] = b'{"cache":{"dtype":"\\u0066\\u0031\\u0036"}}'
    return s


def step_seeds():
    k8 = [0.5] * 16  # config 0: kv row 2*8
    q8 = [0.25] * 32  # config 0: q row 4*8
    s = {
        "c0_flat": bytes([0]) + json.dumps({"layer": 1, "k": k8, "v": k8, "q": q8}).encode(),
        "c0_b64": bytes([0]) + json.dumps({"k": b64(k8 * 2), "v": b64(k8 * 2), "q": b64(q8), "encoding": "b64"}).encode(),
        "c1_nested": bytes([1]) + json.dumps({"k": [[[1, 2, 3, 4, 5, 6, 7, 8]]] * 3, "v": [[[1] * 8]] * 3,
                                              "q": [[[1] * 8, [2] * 8]]}).encode(),
        "c2_steps": bytes([2]) + json.dumps({"steps": [{"k": [[1] * 16] * 5, "v": [[2] * 16] * 5, "m": 5},
                                                       {"q": [[3] * 16], "mask": "block"}]}).encode(),
        "c3_tensor": bytes([3]) + json.dumps({"k1": [1, 2, 3, 4], "k2": [1, 1, 1, 1], "v1": [0, 1, 0, 1],
                                              "v2": [2, 2, 2, 2], "q": [1] * 8}).encode(),
        "c4_window": bytes([4]) + json.dumps({"k1": [1] * 12, "k2": [2] * 12, "v1": [3] * 12, "v2": [4] * 12,
                                              "q": [1] * 8, "mask": "causal"}).encode(),
        "c5_shadow": bytes([5]) + json.dumps({"k": [[i] * 8 for i in range(7)], "v": [[1] * 8] * 7,
                                              "q": [[1] * 16] * 2}).encode(),
        "c6_tensor_two": bytes([6]) + json.dumps({"steps": [{"k1": [1] * 8, "k2": [2] * 8, "v1": [3] * 8, "v2": [4] * 8, "q": [1] * 4}] * 3}).encode(),
        "c7_bf16": bytes([7]) + json.dumps({"k": [1e30, -2.5, 3, 4, 5, 6, 7, 8] * 5, "v": [1] * 40, "q": [0.5] * 32}).encode(),
        "c0_bad": bytes([0]) + b'{"k":[1,2,"x"],"v":[[1],[2,3]],"q":[1e99]}',
        "c0_pure_query": bytes([0]) + json.dumps({"q": q8, "mask": "block"}).encode(),
    }
    return s


def wire_seeds():
    return {
        "b64": b"AACAPwAAAAAAAAAAAAAAAA==",
        "b64_pad": b"AACAPw=",
        "numbers": b"1, -0, 0.5, 1e-45, 3.4028235e38, 3.5e38, -1.5E+3",
        "nested": b"[1,2],[3,4]",
        "object": b'{"steps":[{"k":[1,2],"q":[]}],"x":[[1],[2]],"s":"\\u00e9"}',
        "long_number": b"1" * 70 + b".5",
        "floats": struct.pack("<4f", 1.0, float("inf"), float("nan"), -0.0),
    }


def crc32c(data):
    crc = 0xFFFFFFFF
    for b in data:
        crc ^= b
        for _ in range(8):
            crc = (crc >> 1) ^ 0x82F63B78 if crc & 1 else crc >> 1
    return crc ^ 0xFFFFFFFF


def f32s(xs):
    return struct.pack("<%df" % len(xs), *xs)


def subgen_snapshot(version=3):
    """A version 3 snapshot (README "Snapshot format") of a subgen session as kvd
    would write it: 1 layer, 1 kv head, head_dim 4, sink 1, recent 2,
    cluster_samples 2, value_samples 3, after 9 tokens; tokens 1..6 sketched
    into two clusters (counts 4 and 2, the first's reservoir full). Version 4
    (what kvd writes now) adds cache.max_clusters (u32) after the rotate byte,
    here 2: the sketch is at its cap."""
    d, t, s_ = 4, 2, 3
    meta = bytes([32]) + ID1.encode() + bytes(32) + struct.pack("<ddQQddd", 1.0, 2.0, 3, 0, 0, 0, 0)
    config = (struct.pack("<5I", 1, 1, 1, d, 0) + struct.pack("<f", 0.5)
              + struct.pack("<9I", 0, 0, 0, 0, 4, 1, 2, 0, 0)       # tensor_cache .. residual; eviction 4
              + struct.pack("<d", 0.5) + struct.pack("<II", t, s_)  # delta, cluster_samples, value_samples
              + bytes([0]) + struct.pack("<Qd", 7, 600.0) + bytes([0])
              + (struct.pack("<I", 2) if version >= 4 else b""))  # max_clusters (version 4)
    # the window: positions 0, 7, 8 in slots 0, 1, 2 (f32 rows), 6 tokens evicted
    stream = struct.pack("<4Q", 3, 9, 6, 0)
    stream += f32s([1, 0, 0, 0, 0, 1, 0, 0, 0, 0, 1, 0]) + f32s([1, 2, 3, 4, 4, 3, 2, 1, 1, 1, 1, 1])
    stream += struct.pack("<3Q", 0, 7, 8)
    stream += bytes([0]) + struct.pack("<Q", 0) + bytes([0]) + struct.pack("<3Q", 2, 1, 2)  # recency index
    values = [[1, 0, 0, 0], [0, 2, 0, 0], [0, 0, 1, 1]]  # the sampled tokens' values
    f = 1.0 + 4.0 + 2.0 + 1.0 + 1.0 + 4.0  # F: the six sketched values' ||v||^2
    sketch = struct.pack("<QQdQ", 6, 2, f, 0x123456789ABCDEF)
    sketch += f32s([0.5, 0.5, 0, 0, -0.5, 0, 0.5, 0])                      # centres
    sketch += struct.pack("<QQ", 4, 2)                                     # counts
    sketch += f32s([0.5, 0.5, 0, 0, 0.5, 0.4, 0, 0])                       # cluster 0: t rows
    sketch += f32s([-0.5, 0, 0.5, 0, -0.4, 0, 0.5, 0])                     # cluster 1: both its tokens
    for i in range(s_):
        sketch += f32s([0.5, 0.5, 0, 0]) + f32s(values[i])
    body = meta + config + stream + sketch
    total = 64 + len(body) + 4
    header = (b"KVDSNAP1" + struct.pack("<IIQ", version, 64, total) + b"0.5.0".ljust(16, b"\0")
              + struct.pack("<QIIQ", 4096, 0, 0, 0))
    raw = header + body
    return raw + struct.pack("<I", crc32c(raw))


def restore_seeds():
    # first byte: bit 0 set recomputes the checksum after mutation (fuzz_restore.c)
    snap, snap4 = subgen_snapshot(), subgen_snapshot(4)
    return {"subgen": bytes([0]) + snap, "subgen_forged": bytes([1]) + snap,
            "subgen_v4": bytes([0]) + snap4, "subgen_v4_forged": bytes([1]) + snap4}


def main():
    out = os.path.join(HERE, "corpus")
    for name, seeds in [("http", http_seeds()), ("create", create_seeds()), ("step", step_seeds()),
                        ("wire", wire_seeds()), ("restore", restore_seeds())]:
        d = os.path.join(out, name)
        os.makedirs(d, exist_ok=True)
        for k, v in seeds.items():
            with open(os.path.join(d, "seed_" + k), "wb") as f:
                f.write(v)
    return 0


if __name__ == "__main__":
    sys.exit(main())
