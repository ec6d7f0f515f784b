"""tests/clients/test_kvd_client.py — clients/python/kvd_client.py against a
running kvd (KVD_URL; KVD_API_KEY, which the server must hold): every method,
both encodings, the input forms, keep-alive, b64 both ways, and the errors as
KvdError (status, code, message, field). Started by scripts/test-clients.sh
(`make test-clients`). Python 3 standard library only."""
import array
import math
import os
import struct
import sys
import unittest

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "..", "clients", "python"))
from kvd_client import KVD, KvdError, b64_decode, b64_encode  # noqa: E402

URL = os.environ.get("KVD_URL", "http://127.0.0.1:8080")
KEY = os.environ.get("KVD_API_KEY")

# One session shape for most tests: heads 4 over kv_heads 2, head_dim 2.
SHAPE = dict(layers=2, heads=4, kv_heads=2, head_dim=2)


def ref_attention(keys, values, q, heads, kv_heads, d, scale):
    """One query token q [heads][d] over keys/values [n][kv_heads][d]."""
    out = []
    for h in range(heads):
        g = h // (heads // kv_heads)
        s = [scale * sum(a * b for a, b in zip(q[h], k[g])) for k in keys]
        mx = max(s)
        w = [math.exp(e - mx) for e in s]
        z = sum(w)
        out.extend(sum(w[j] / z * values[j][g][c] for j in range(len(keys))) for c in range(d))
    return out


class B64(unittest.TestCase):
    def test_known_vector(self):
        self.assertEqual(b64_encode([1.0]), "b64:AACAPw==")
        self.assertEqual(b64_decode("b64:AACAPw=="), [1.0])
        self.assertEqual(b64_encode([]), "b64:")
        self.assertEqual(b64_decode("b64:"), [])

    def test_round_trip(self):
        xs = [0.0, -1.5, 3.25, 1e-30, -3.4028234663852886e38, 0.1]
        back = b64_decode(b64_encode(xs))
        self.assertEqual(back, [struct.unpack("<f", struct.pack("<f", x))[0] for x in xs])
        self.assertEqual(b64_decode(b64_encode(array.array("f", xs))), back)
        self.assertEqual(b64_decode(b64_encode(array.array("d", xs))), back)

    def test_rejections(self):
        with self.assertRaises(ValueError):
            b64_decode("AACAPw==")
        with self.assertRaises(ValueError):
            b64_decode("b64:AAAA")  # 3 bytes


class Client(unittest.TestCase):
    def setUp(self):
        self.kvd = KVD(URL, api_key=KEY)
        self.made = []

    def tearDown(self):
        for sid in self.made:
            try:
                self.kvd.delete(sid)
            except KvdError:
                pass
        self.kvd.close()

    def create(self, client=None, **cfg):
        r = (client or self.kvd).create(**cfg)
        self.made.append(r["id"])
        return r

    def test_info_and_health(self):
        info = self.kvd.info()
        self.assertEqual(info["name"], "kvd")
        self.assertIn("max_step_tokens", info["limits"])
        self.assertEqual(self.kvd.healthz(), {"status": "ok"})

    def test_create_stats_list_delete(self):
        r = self.create(**SHAPE, cache={"dtype": "f16"})
        sid = r["id"]
        self.assertEqual(r["config"]["kv_heads"], 2)
        self.assertEqual(r["config"]["cache"]["dtype"], "f16")
        self.assertAlmostEqual(r["config"]["scale"], 1 / math.sqrt(2), places=6)
        st = self.kvd.stats(sid)
        self.assertEqual((st["id"], st["tokens"], st["steps"]), (sid, 0, 0))
        ids = []
        after = None
        while True:  # page through with limit 1
            page = self.kvd.list(limit=1, after=after)
            ids += [s["id"] for s in page["sessions"]]
            after = page["next_after"]
            if after is None:
                break
        self.assertIn(sid, ids)
        d = self.kvd.delete(sid)
        self.made.remove(sid)
        self.assertEqual((d["id"], d["deleted"]), (sid, True))
        with self.assertRaises(KvdError) as cm:
            self.kvd.stats(sid)
        self.assertEqual((cm.exception.status, cm.exception.code), (404, "not_found"))

    def check_step(self, encoding):
        kvd = KVD(URL, api_key=KEY, encoding=encoding)
        try:
            sid = self.create(kvd, **SHAPE)["id"]
            keys = [[[1.0, 0.0], [0.0, 1.0]], [[0.5, 0.5], [1.0, -1.0]]]
            vals = [[[1.0, 2.0], [3.0, 4.0]], [[5.0, 6.0], [7.0, 8.0]]]
            qs = [[[1.0, 0.0], [0.0, 1.0], [1.0, 1.0], [0.5, 0.0]]] * 2
            r = kvd.step(sid, layer=1, k=keys, v=vals, q=qs)
            self.assertEqual((r["tokens"], r["evicted"]), (2, 0))
            self.assertEqual(len(r["o"]), 2 * 4 * 2)
            scale = 1 / math.sqrt(2)
            want = (ref_attention(keys[:1], vals[:1], qs[0], 4, 2, 2, scale)
                    + ref_attention(keys, vals, qs[1], 4, 2, 2, scale))  # causal
            for a, b in zip(r["o"], want):
                self.assertAlmostEqual(a, b, places=5)
            # A pure query (m = 0, block) as a flat array('f') sees both tokens.
            r = kvd.step(sid, layer=1, q=array.array("f", [c for h in qs[1] for c in h]))
            for a, b in zip(r["o"], want[8:]):
                self.assertAlmostEqual(a, b, places=5)
            return r
        finally:
            kvd.close()

    def test_step_b64_and_json_agree(self):
        a = self.check_step("b64")
        b = self.check_step("json")
        for x, y in zip(a["o"], b["o"]):
            self.assertAlmostEqual(x, y, places=6)

    def test_steps_several_layers(self):
        sid = self.create(**SHAPE)["id"]
        tok = [[[1.0, 0.0], [0.0, 1.0]]]
        q = [[[1.0, 0.0], [0.0, 1.0], [1.0, 1.0], [0.5, 0.0]]]
        rs = self.kvd.steps(sid, [dict(layer=0, k=tok, v=tok, q=q),
                                  dict(layer=1, k=tok, v=tok, q=q, mask="causal", m=1)])
        self.assertEqual(len(rs), 2)
        self.assertEqual([r["tokens"] for r in rs], [1, 1])
        self.assertEqual(rs[0]["o"], rs[1]["o"])  # one token: o is its value
        self.assertEqual(self.kvd.stats(sid)["steps"], 2)

    def test_fork(self):
        sid = self.create(**SHAPE)["id"]
        tok = [[[1.0, 0.0], [0.0, 1.0]]]
        self.kvd.step(sid, k=tok, v=tok)
        f = self.kvd.fork(sid)
        self.made.append(f["id"])
        self.assertEqual(f["parent"], sid)
        self.assertEqual(self.kvd.stats(f["id"])["tokens"], 2)  # 1 token x 2 kv heads

    def test_keep_alive(self):
        self.kvd.info()
        sock = self.kvd._conn.sock
        self.assertIsNotNone(sock)
        for _ in range(5):
            self.kvd.info()
        self.assertIs(self.kvd._conn.sock, sock)
        # An error answer keeps the connection too.
        with self.assertRaises(KvdError):
            self.kvd.stats("0" * 32)
        self.kvd.info()
        self.assertIs(self.kvd._conn.sock, sock)

    def test_errors(self):
        with self.assertRaises(KvdError) as cm:
            self.kvd.create(heads=4, kv_heads=3)
        e = cm.exception
        self.assertEqual((e.status, e.code, e.field), (400, "invalid_argument", "kv_heads"))
        self.assertTrue(e.message)
        sid = self.create(**SHAPE)["id"]
        # k with q's head count, nested, as JSON: a 400 naming k and both shapes.
        with KVD(URL, api_key=KEY, encoding="json") as js:
            with self.assertRaises(KvdError) as cm:
                js.step(sid, k=[[[1.0, 0.0]] * 4], v=[[[1.0, 0.0]] * 2])
        self.assertEqual(cm.exception.field, "k")
        self.assertIn("got [1, 4, 2]", cm.exception.message)
        # The same through b64: the client sends m = 1 from the nesting, and
        # kvd (which sees 2 tokens of 4 numbers) refuses it, naming m.
        with self.assertRaises(KvdError) as cm:
            self.kvd.step(sid, k=[[[1.0, 0.0]] * 4], v=[[[1.0, 0.0]] * 4])
        self.assertEqual((cm.exception.status, cm.exception.field), (400, "m"))
        self.assertEqual(self.kvd.stats(sid)["tokens"], 0)
        with self.assertRaises(KvdError) as cm:
            self.kvd.step(sid, layer=5, q=[0.0] * 8)
        self.assertEqual(cm.exception.field, "layer")
        with self.assertRaises(KvdError) as cm:
            self.kvd.fork("f" * 32)
        self.assertEqual(cm.exception.status, 404)
        with self.assertRaises(KvdError) as cm:
            self.kvd.list(limit=0)
        self.assertEqual((cm.exception.status, cm.exception.field), (400, "limit"))
        with self.assertRaises(TypeError):
            self.kvd.step(sid, k="not a tensor", v=[0.0])

    @unittest.skipUnless(KEY, "kvd runs without API keys")
    def test_api_key(self):
        for key in (None, KEY + "x"):
            with KVD(URL, api_key=key) as other:
                with self.assertRaises(KvdError) as cm:
                    other.info()
                self.assertEqual((cm.exception.status, cm.exception.code), (401, "unauthenticated"))
                self.assertEqual(other.healthz(), {"status": "ok"})  # public


if __name__ == "__main__":
    unittest.main()
