"""kvd_client — a Python client for kvd's HTTP API (api/openapi.yaml).

Python 3 standard library only (http.client, json, base64, struct, array):
one keep-alive connection per KVD object, tensors sent as "b64:" little-endian
f32 by default (the fast path) or as JSON numbers, outputs decoded to lists of
floats either way, API keys as "Authorization: Bearer <key>", and every error
answer raised as KvdError(status, code, message, field).

Tensors may be given as flat lists of floats, nested lists ([m, heads,
head_dim], as numpy's tolist() gives them), array.array('f' or 'd'), or
anything with a tolist() method (a numpy array, without importing numpy).
When a k (or k1) comes with its shape (nested, or an object with .shape), the
client sends "m" = its first dimension, so kvd checks the token count even on
the b64 path, where the nesting itself is not sent.

    from kvd_client import KVD
    kvd = KVD("http://127.0.0.1:8080", api_key=None)
    sid = kvd.create(layers=1, heads=2, kv_heads=1, head_dim=4)["id"]
    out = kvd.step(sid, k=[[[1, 0, 0, 0]]], v=[[[1, 2, 3, 4]]], q=[[[1, 0, 0, 0], [0, 1, 0, 0]]])
    out["o"]  # [m_q * heads * head_dim] floats
    kvd.delete(sid)
"""
import array
import base64
import http.client
import json
import struct
import sys
import urllib.parse

__all__ = ["KVD", "KvdError", "b64_encode", "b64_decode"]

TENSOR_FIELDS = ("k", "v", "q", "k1", "k2", "v1", "v2")


class KvdError(Exception):
    """An answer that is not 2xx: status, and from kvd's error body
    {"error": {"code", "message", "field"}} code, message and field (None if
    absent); retry_after from the Retry-After header (seconds) or None."""

    def __init__(self, status, code, message, field=None, retry_after=None):
        super().__init__(f"{status} {code}: {message}" + (f" (field {field})" if field else ""))
        self.status = status
        self.code = code
        self.message = message
        self.field = field
        self.retry_after = retry_after


def b64_encode(values):
    """'b64:' + base64 of the values as little-endian f32."""
    if isinstance(values, array.array) and values.typecode == "f":
        a = values
    else:
        a = array.array("f", values)
    if sys.byteorder != "little":
        a = array.array("f", a)
        a.byteswap()
    return "b64:" + base64.b64encode(a.tobytes()).decode("ascii")


def b64_decode(text):
    """The floats of a 'b64:...' string (little-endian f32), as a list."""
    if not text.startswith("b64:"):
        raise ValueError("a b64 tensor starts with 'b64:'")
    raw = base64.b64decode(text[4:], validate=True)
    if len(raw) % 4:
        raise ValueError("b64 tensor is not a whole number of f32")
    return list(struct.unpack(f"<{len(raw) // 4}f", raw))


def _flatten(x, out):
    for e in x:
        if isinstance(e, (list, tuple)):
            _flatten(e, out)
        else:
            out.append(float(e))


def _prepare(x):
    """(value as given or a list, its first dim if it came with a shape, flat
    floats or an array('f')): the forms a tensor argument may take."""
    shape_rows = None
    if hasattr(x, "shape") and hasattr(x, "tolist"):  # numpy and the like
        shape_rows = int(x.shape[0]) if len(x.shape) > 1 else None
        x = x.tolist()
    if isinstance(x, array.array):
        return x, None, x
    if isinstance(x, (list, tuple)):
        nested = any(isinstance(e, (list, tuple)) for e in x)
        if nested:
            shape_rows = len(x)
        flat = []
        _flatten(x, flat)
        return list(x), shape_rows, flat
    raise TypeError(f"a tensor is a list, an array.array or has tolist(), not {type(x).__name__}")


def _decode_o(o):
    return b64_decode(o) if isinstance(o, str) else [float(e) for e in o]


class KVD:
    """One kvd server. encoding: "b64" (default) or "json" — how tensors are
    sent and asked back; timeout in seconds for each request."""

    def __init__(self, url="http://127.0.0.1:8080", api_key=None, encoding="b64", timeout=60.0):
        u = urllib.parse.urlsplit(url)
        if u.scheme != "http":
            raise ValueError("kvd speaks plain HTTP (put a TLS proxy in front of it)")
        self.host = u.hostname or "127.0.0.1"
        self.port = u.port or 80
        self.base = u.path.rstrip("/")
        self.api_key = api_key
        if encoding not in ("b64", "json"):
            raise ValueError("encoding is 'b64' or 'json'")
        self.encoding = encoding
        self.timeout = timeout
        self._conn = None

    # ---- transport --------------------------------------------------------

    def close(self):
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def _request(self, method, path, body=None):
        data = None
        headers = {"Accept": "application/json"}
        if body is not None:
            data = json.dumps(body, separators=(",", ":")).encode()
            headers["Content-Type"] = "application/json"
        if self.api_key is not None:
            headers["Authorization"] = "Bearer " + self.api_key
        for attempt in (0, 1):
            reused = self._conn is not None
            if not reused:
                self._conn = http.client.HTTPConnection(self.host, self.port, timeout=self.timeout)
            try:
                self._conn.request(method, self.base + path, body=data, headers=headers)
                resp = self._conn.getresponse()
                raw = resp.read()
            except (http.client.RemoteDisconnected, BrokenPipeError, ConnectionResetError):
                # kvd closes a keep-alive connection idle past --idle-timeout:
                # a reused one that fails before any answer is opened anew once.
                self.close()
                if reused and attempt == 0:
                    continue
                raise
            except Exception:
                self.close()
                raise
            if resp.getheader("Connection", "").lower() == "close":
                self.close()
            break
        ctype = resp.getheader("Content-Type", "")
        parsed = json.loads(raw) if raw and ctype.startswith("application/json") else raw
        if not 200 <= resp.status < 300:
            err = parsed.get("error", {}) if isinstance(parsed, dict) else {}
            ra = resp.getheader("Retry-After")
            raise KvdError(resp.status, err.get("code"), err.get("message", raw.decode(errors="replace")),
                           err.get("field"), int(ra) if ra and ra.isdigit() else None)
        return parsed

    # ---- tensors ----------------------------------------------------------

    def _entry(self, layer=None, k=None, v=None, q=None, mask=None, m=None,
               k1=None, k2=None, v1=None, v2=None):
        """One step entry's JSON object."""
        e = {}
        if layer is not None:
            e["layer"] = layer
        given = {"k": k, "v": v, "q": q, "k1": k1, "k2": k2, "v1": v1, "v2": v2}
        for name in TENSOR_FIELDS:
            x = given[name]
            if x is None:
                continue
            as_given, rows, flat = _prepare(x)
            if self.encoding == "b64":
                e[name] = b64_encode(flat)
            else:  # JSON keeps the caller's nesting: kvd checks its shape
                e[name] = as_given if not isinstance(as_given, array.array) else list(as_given)
            if name in ("k", "k1") and rows is not None and m is None:
                m = rows
        if mask is not None:
            e["mask"] = mask
        if m is not None:
            e["m"] = m
        return e

    @staticmethod
    def _result(r):
        out = dict(r)
        out["o"] = _decode_o(r["o"])
        return out

    # ---- the API ----------------------------------------------------------

    def create(self, **config):
        """POST /v1/sessions: {"id", "config"}. Keyword arguments are the create
        body (layers, heads, kv_heads, head_dim, attention, cache={...}, ...)."""
        return self._request("POST", "/v1/sessions", config)

    def step(self, sid, layer=0, k=None, v=None, q=None, mask=None, m=None,
             k1=None, k2=None, v1=None, v2=None):
        """POST /v1/sessions/{sid}/step with one entry: {"o": [floats],
        "tokens", "evicted"} (and "shadow" with shadow mode)."""
        body = self._entry(layer, k, v, q, mask, m, k1, k2, v1, v2)
        body["encoding"] = self.encoding
        return self._result(self._request("POST", f"/v1/sessions/{sid}/step", body))

    def steps(self, sid, entries):
        """Several entries in one request (layers in order); each entry is a
        dict of step()'s keyword arguments. Returns one result per entry."""
        body = {"steps": [self._entry(**e) for e in entries], "encoding": self.encoding}
        r = self._request("POST", f"/v1/sessions/{sid}/step", body)
        return [self._result(x) for x in r["steps"]]

    def fork(self, sid):
        """POST /v1/sessions/{sid}/fork: {"id", "parent", "config"}."""
        return self._request("POST", f"/v1/sessions/{sid}/fork", {})

    def delete(self, sid):
        """DELETE /v1/sessions/{sid}: {"id", "deleted", "pages_freed"}."""
        return self._request("DELETE", f"/v1/sessions/{sid}")

    def stats(self, sid):
        """GET /v1/sessions/{sid}: the session's stats."""
        return self._request("GET", f"/v1/sessions/{sid}")

    def list(self, limit=None, after=None):
        """GET /v1/sessions: {"sessions", "next_after", "total"} (one page)."""
        query = {}
        if limit is not None:
            query["limit"] = str(limit)
        if after is not None:
            query["after"] = after
        qs = ("?" + urllib.parse.urlencode(query)) if query else ""
        return self._request("GET", "/v1/sessions" + qs)

    def info(self):
        """GET /v1/info: version, build, kernel, pool, limits."""
        return self._request("GET", "/v1/info")

    def healthz(self):
        return self._request("GET", "/healthz")
