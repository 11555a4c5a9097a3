"""Seeded generators of test and benchmark inputs: no outside data.

Each generator is a function ``(size, seed) -> bytes`` that returns exactly
``size`` bytes and the same bytes for the same arguments on every machine and
Python version. That is why only two sources of randomness are used:

- ``random.Random(seed).random()``: the one method whose sequence Python
  guarantees not to change between versions (Mersenne Twister, IEEE doubles);
  every choice below is derived from it with plain integer/float arithmetic;
- SHAKE-256 of the seed, for the incompressible bytes.

Generators:

    text     pseudo-English: a fixed vocabulary of made-up words drawn with a
             Zipf distribution, sentences with commas and end marks,
             paragraphs separated by blank lines
    log      timestamped, structured server-log lines (levels, components,
             addresses, request paths, status codes, durations)
    binary   little-endian records (ids, kinds, counters, float32 / float64
             measurements) with some records repeated verbatim
    random   incompressible bytes

Usage::

    python -m corpora.generate OUTDIR [--size 1000000] [--seed 0] [--only text,log]
    python corpora/generate.py OUTDIR
    python -m corpora.generate --verify      # check the reference digests

From Python::

    from corpora.generate import GENERATORS, generate
    data = generate("text", 100_000, seed=1)
"""
from __future__ import annotations

import argparse
import bisect
import hashlib
import math
import os
import random
import struct
import sys

__all__ = ["text_like", "log_like", "binary_like", "incompressible", "GENERATORS", "generate",
           "write_all", "verify"]


class _Rng:
    """Deterministic helpers built on ``random.Random.random()`` only."""

    def __init__(self, seed: int, salt: str):
        # A string seed is hashed by a fixed algorithm (SHA-512, version 2 seeding).
        self._r = random.Random(f"ssmzip-corpora/{salt}/{int(seed)}")

    def random(self) -> float:
        return self._r.random()

    def below(self, n: int) -> int:
        """Integer in [0, n)."""
        return min(int(self._r.random() * n), n - 1)

    def between(self, lo: int, hi: int) -> int:
        """Integer in [lo, hi]."""
        return lo + self.below(hi - lo + 1)

    def pick(self, seq):
        return seq[self.below(len(seq))]

    def weighted(self, cumulative) -> int:
        """Index drawn from a cumulative weight list (last entry = total)."""
        return bisect.bisect_right(cumulative, self._r.random() * cumulative[-1])

    def normal(self, mu: float, sigma: float) -> float:
        """Approximately normal (Irwin-Hall: the sum of 12 uniforms). Only +, -, x
        are used: libm functions may differ in the last bit between machines."""
        return mu + sigma * (sum(self._r.random() for _ in range(12)) - 6.0)


def _zipf_cumulative(n: int, steep: bool = False, q: float = 2.7):
    """Cumulative Zipf weights 1/(r+q) (or 1/(r+q)^1.5 when steep); sqrt is
    correctly rounded by IEEE 754, unlike pow."""
    total, out = 0.0, []
    for r in range(n):
        total += 1.0 / ((r + q) * math.sqrt(r + q)) if steep else 1.0 / (r + q)
        out.append(total)
    return out


def _sin(x: float) -> float:
    """A smooth periodic wave close to sin(x), from basic operations only."""
    t = x / (2.0 * math.pi)
    t -= math.floor(t)                 # [0, 1)
    s = 1.0 if t < 0.5 else -1.0
    u = (t if t < 0.5 else t - 0.5) * math.pi    # [0, pi)
    return s * 16.0 * u * (math.pi - u) / (5.0 * math.pi * math.pi - 4.0 * u * (math.pi - u))


# ----------------------------------------------------------------- text

_ONSETS = ["", "b", "c", "d", "f", "g", "h", "l", "m", "n", "p", "r", "s", "t", "v", "w",
           "br", "ch", "cl", "dr", "fr", "gr", "pl", "pr", "sh", "st", "th", "tr", "wh"]
_VOWELS = ["a", "e", "i", "o", "u", "ea", "ou", "ai", "ee", "io", "y"]
_CODAS = ["", "", "", "n", "r", "s", "t", "l", "m", "nd", "st", "ng", "rt", "ck", "ss"]
_SUFFIXES = ["", "", "", "", "s", "ed", "ing", "ly", "tion", "er", "ment", "al"]
_FUNCTION_WORDS = ["the", "of", "and", "to", "a", "in", "is", "that", "for", "it", "as",
                   "was", "with", "be", "by", "on", "not", "he", "this", "are", "or", "his",
                   "from", "at", "which", "but", "have", "an", "had", "they", "you", "were"]


def _vocabulary(rng: _Rng, n: int):
    words, seen = list(_FUNCTION_WORDS), set(_FUNCTION_WORDS)
    made = []
    while len(words) + len(made) < n:
        u = rng.random()
        syllables = 1 if u < 0.45 else 2 if u < 0.85 else 3
        w = "".join(rng.pick(_ONSETS) + rng.pick(_VOWELS) + rng.pick(_CODAS)
                    for _ in range(syllables))
        if rng.random() < 0.3:
            w += rng.pick(_SUFFIXES)
        if len(w) > 1 and w not in seen:
            seen.add(w)
            made.append(w)
    # Frequent words are short, as in real languages (the sort is stable).
    return words + sorted(made, key=len)


def text_like(size: int, seed: int = 0) -> bytes:
    """Pseudo-English prose: Zipf-distributed words, sentences, paragraphs."""
    rng = _Rng(seed, "text")
    vocab = _vocabulary(rng, 6000)
    cum = _zipf_cumulative(len(vocab))
    # A few capitalised "names" that recur, as in encyclopaedic text.
    names = [w.capitalize() for w in _vocabulary(rng, 240)[len(_FUNCTION_WORDS):]]
    names_cum = _zipf_cumulative(len(names), steep=True)
    # Each word has four habitual followers, which gives the text bigram structure.
    followers = [[rng.weighted(cum) for _ in range(4)] for _ in vocab]
    parts, n = [], 0
    while n < size:
        sentences = []
        for _ in range(rng.between(2, 7)):
            words, prev = [], -1
            for i in range(rng.between(4, 22)):
                if rng.random() < 0.05:
                    words.append(names[rng.weighted(names_cum)])
                    prev = -1
                    continue
                if prev >= 0 and rng.random() < 0.45:
                    prev = followers[prev][rng.below(4)]     # a habitual bigram
                else:
                    prev = rng.weighted(cum)
                words.append(vocab[prev])
                if i > 2 and rng.random() < 0.07:
                    words[-1] += ","
            if rng.random() < 0.04:
                words.append(str(rng.between(1000, 2024)))
            words[0] = words[0][:1].upper() + words[0][1:]
            end = "." if rng.random() < 0.9 else rng.pick("?!;:")
            sentences.append(" ".join(words).rstrip(",") + end)
        para = " ".join(sentences) + "\n\n"
        parts.append(para)
        n += len(para)
    return "".join(parts).encode("ascii")[:size]


# ----------------------------------------------------------------- log

_LEVELS = ["INFO"] * 16 + ["DEBUG"] * 8 + ["WARN"] * 3 + ["ERROR"]
_COMPONENTS = ["http", "db.pool", "auth", "cache", "scheduler", "storage.s3", "mailer", "api.v2"]
_METHODS = ["GET"] * 10 + ["POST"] * 4 + ["PUT", "DELETE"]
_PATHS = ["/", "/index.html", "/api/v2/users", "/api/v2/users/{id}", "/api/v2/orders",
          "/api/v2/orders/{id}/items", "/static/app.{id}.js", "/login", "/logout", "/health",
          "/search?q=item{id}", "/img/{id}.png"]
_STATUS = [200] * 30 + [201, 204, 301, 302, 304, 304, 400, 401, 403, 404, 404, 500, 503]
_MESSAGES = ["connection opened", "connection closed", "cache miss for key user:{id}",
             "cache hit for key user:{id}", "retrying job {id} (attempt 2 of 5)",
             "slow query on table orders ({id} rows)", "token refreshed for session {id}",
             "queue depth {id}", "checkpoint written", "GC pause"]


def log_like(size: int, seed: int = 0) -> bytes:
    """Timestamped structured log lines: request lines and event lines."""
    rng = _Rng(seed, "log")
    t = 1_700_000_000_000                      # milliseconds
    clients = [f"10.{rng.below(4)}.{rng.below(256)}.{rng.between(1, 254)}" for _ in range(60)]
    clients_cum = _zipf_cumulative(len(clients))
    hosts = [f"web-{i:02d}" for i in range(1, 7)]
    parts, n = [], 0
    while n < size:
        t += rng.below(400) if rng.random() < 0.9 else rng.below(20000)
        sec, ms = divmod(t, 1000)
        day, rem = divmod(sec, 86400)
        hh, rem = divmod(rem, 3600)
        mi, ss = divmod(rem, 60)
        y, mo, d = _civil_from_days(day)
        stamp = f"{y:04d}-{mo:02d}-{d:02d}T{hh:02d}:{mi:02d}:{ss:02d}.{ms:03d}Z"
        level = rng.pick(_LEVELS)
        comp = rng.pick(_COMPONENTS)
        host = rng.pick(hosts)
        if comp in ("http", "api.v2") or rng.random() < 0.3:
            path = rng.pick(_PATHS).replace("{id}", str(rng.below(5000)))
            status = rng.pick(_STATUS)
            ms_taken = max(0.1, round(abs(rng.normal(40.0, 30.0)), 1))
            line = (f"{stamp} {level:<5} [{host}] {comp}: {clients[rng.weighted(clients_cum)]} "
                    f"\"{rng.pick(_METHODS)} {path} HTTP/1.1\" {status} "
                    f"{rng.below(60000)} {ms_taken}ms\n")
        else:
            msg = rng.pick(_MESSAGES).replace("{id}", str(rng.below(100000)))
            line = f"{stamp} {level:<5} [{host}] {comp}: {msg}\n"
        parts.append(line)
        n += len(line)
    return "".join(parts).encode("ascii")[:size]


def _civil_from_days(z: int):
    """Days since 1970-01-01 -> (year, month, day), proleptic Gregorian."""
    z += 719468
    era = z // 146097
    doe = z - era * 146097
    yoe = (doe - doe // 1460 + doe // 36524 - doe // 146096) // 365
    y = yoe + era * 400
    doy = doe - (365 * yoe + yoe // 4 - yoe // 100)
    mp = (5 * doy + 2) // 153
    d = doy - (153 * mp + 2) // 5 + 1
    m = mp + 3 if mp < 10 else mp - 9
    return y + (m <= 2), m, d


# ----------------------------------------------------------------- binary

_RECORD = struct.Struct("<IHhiffd")          # 28 bytes, little-endian


def binary_like(size: int, seed: int = 0) -> bytes:
    """Fixed-size little-endian records with slowly varying fields and repeats.

    Record: uint32 id (incrementing), uint16 kind (few values), int16 delta,
    int32 counter (random walk), float32 sensor value (smooth + noise, on a
    1/64 grid), float32 constant-ish calibration, float64 timestamp. A small
    header, and every so often a block of earlier records repeated verbatim.
    """
    rng = _Rng(seed, "binary")
    out = bytearray(b"SSMZBENCH\x00\x01\x00" + struct.pack("<I", _RECORD.size))
    history = []
    rid, counter, phase, ts = 0, 0, 0.0, 1.7e9
    calib = [1.0, 0.5, 0.25, 2.0]
    while len(out) < size:
        if len(history) > 64 and rng.random() < 0.01:
            start = rng.below(len(history) - 32)
            for rec in history[start:start + rng.between(4, 32)]:
                out += rec
            continue
        rid += 1
        kind = rng.pick((1, 1, 1, 2, 2, 3, 7))
        delta = rng.between(-40, 40) if rng.random() < 0.8 else rng.between(-32768, 32767)
        counter = max(-2**31, min(2**31 - 1, counter + delta))
        phase += 0.01
        value = round((_sin(phase) * 100.0 + rng.normal(0.0, 2.0)) * 64.0) / 64.0
        ts += 0.001 * rng.between(1, 50)
        rec = _RECORD.pack(rid, kind, delta, counter, value, calib[kind & 3], ts)
        history.append(rec)
        out += rec
    return bytes(out[:size])


# ----------------------------------------------------------------- random

def incompressible(size: int, seed: int = 0) -> bytes:
    """Uniformly random bytes (SHAKE-256 of the seed)."""
    return hashlib.shake_256(f"ssmzip-corpora/random/{int(seed)}".encode()).digest(size)


GENERATORS = {
    "text": text_like,
    "log": log_like,
    "binary": binary_like,
    "random": incompressible,
}

# SHA-256 of generate(name, 65536, seed=0): proves the generators are the same
# on this machine as where they were written (`--verify`).
REFERENCE_SHA256 = {
    "text": "4b67e4283ac4ccf1719fd9424fcdd77f0389df6f1ac641d002b4bc4ce179b847",
    "log": "b115d9939f3ea135040ab4b3bf9cb2d042e8c925fda67552e0d99f96e52733ec",
    "binary": "025afcbd2e63d66a4c71a5467e1ffa342edaf9dab771397c52bff0e2235d35bb",
    "random": "2291a3e404937f4951293d633bcf1f3bf6e87493eeb727eaa67bdd4d4d2141b0",
}


def generate(name: str, size: int, seed: int = 0) -> bytes:
    if name not in GENERATORS:
        raise KeyError(f"unknown corpus {name!r}; known: {', '.join(GENERATORS)}")
    if size < 0:
        raise ValueError("size must be >= 0")
    data = GENERATORS[name](size, seed)
    assert len(data) == size, (name, len(data), size)
    return data


def size_label(size: int) -> str:
    for unit, n in (("M", 1_000_000), ("K", 1000)):
        if size >= n and size % n == 0:
            return f"{size // n}{unit}"
    return str(size)


def write_all(outdir: str, size: int = 1_000_000, seed: int = 0, names=None):
    """Write each corpus as OUTDIR/<name>_<size>; return {name: path}."""
    os.makedirs(outdir, exist_ok=True)
    paths = {}
    for name in names or GENERATORS:
        path = os.path.join(outdir, f"{name}_{size_label(size)}")
        with open(path, "wb") as f:
            f.write(generate(name, size, seed))
        paths[name] = path
    return paths


def verify() -> bool:
    ok = True
    for name, want in REFERENCE_SHA256.items():
        got = hashlib.sha256(generate(name, 65536, 0)).hexdigest()
        status = "ok" if got == want else "MISMATCH"
        ok &= got == want
        print(f"{name:8s} {got} {status}")
    return ok


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m corpora.generate", description=__doc__.split("\n")[0])
    ap.add_argument("outdir", nargs="?", help="directory to write the corpora into")
    ap.add_argument("--size", type=int, default=1_000_000, help="bytes per corpus (default 1000000)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--only", help="comma-separated subset of: " + ",".join(GENERATORS))
    ap.add_argument("--verify", action="store_true", help="check the reference digests and exit")
    args = ap.parse_args(argv)
    if args.verify:
        return 0 if verify() else 1
    if not args.outdir:
        ap.error("OUTDIR is required (or --verify)")
    names = args.only.split(",") if args.only else None
    for name, path in write_all(args.outdir, args.size, args.seed, names).items():
        print(f"{path}  {os.path.getsize(path)} bytes")
    return 0


if __name__ == "__main__":
    sys.exit(main())
