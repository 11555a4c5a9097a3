"""Write the golden files: small inputs and their .ssz files at levels 1, 6 and 9
(9 with the online SSM).

    python tests/golden/make_golden.py          # from the repository root

Run it once when the engine's output is final, and commit what it writes
(NAME.bin and NAME-LEVEL.ssz). From then on tests/test_golden.py checks that
every .ssz here still decodes to its input and that compressing the input
again reproduces it byte for byte. A change that breaks that is a format
change: bump the container's format version and keep decoding old files.

Files of an earlier format stay beside them and are never rewritten: NAME-1v1.ssz
and NAME-6v1.ssz were made by levels 1 and 6 before they were retuned for speed
(commits 93d1360, a009a93: other contexts, another match length), NAME-1v2.ssz
by level 1 when it was still the context-mixing engine (before the BWT); NAME-9v1.ssz
were made by level 9 before it had an SSM (preset layout 1), NAME-9v2.ssz by
level 9 with the SSM but before its fourth and fifth mixers, fourth APM and
six text contexts, NAME-9v3.ssz by level 9 before its preset layout 3 (mixer
update threshold 32, first APM share 1/4, a larger third APM, two markup
contexts), NAME-9v4.ssz by level 9 before its preset layout 4 (wider mixer
weight sets, a fifth APM), NAME-9v5.ssz by level 9 before its SSM learned a
chunk late (preset layout 6); they must still decode and re-encode (with the
preset stored in them) to the same bytes.

The inputs come from a self-contained xorshift generator (no library RNG
whose sequence could change), so running this again gives the same inputs.
"""
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
LEVELS = (1, 6, 9)
LEGACY = ("1v1", "1v2", "6v1", "9v1", "9v2", "9v3", "9v4", "9v5")  # suffixes of kept files of earlier presets (see above)
BLOCK_SIZE = 4096        # so that the inputs span several blocks, the last one short


def _xorshift(seed: int):
    x = seed & 0xFFFFFFFF or 1
    while True:
        x ^= (x << 13) & 0xFFFFFFFF
        x ^= x >> 17
        x ^= (x << 5) & 0xFFFFFFFF
        yield x


_WORDS = ("the of and to in a is that for it as was with be by on not he this are or "
          "his from at which but have an they you were her she there been one all we "
          "their state space model context mixing arithmetic coder entropy stream block "
          "prediction probability network learning compression").split()


def text_input(n: int = 9000, seed: int = 12345) -> bytes:
    """English-like text: skewed word frequencies, punctuation, lines, some numbers."""
    rng = _xorshift(seed)
    out, size, col = [], 0, 0
    while size < n:
        r = next(rng)
        w = _WORDS[(r % 1024) * (r % 1024) * len(_WORDS) // (1024 * 1024)]
        if r >> 28 == 0:
            w = str(next(rng) % 10000)
        if (r >> 20) & 15 == 0:
            w = w.capitalize()
        sep = ". " if (r >> 24) & 15 == 1 else ", " if (r >> 24) & 15 == 2 else " "
        col += len(w) + len(sep)
        if col > 72:
            sep, col = "\n", 0
        out.append(w + sep)
        size += len(w) + len(sep)
    return "".join(out).encode()[:n]


def binary_input(n: int = 7000, seed: int = 777) -> bytes:
    """Binary records (counters, small fields, a slowly varying value) with a noisy tail."""
    rng = _xorshift(seed)
    out = bytearray()
    value = 1000
    i = 0
    while len(out) < n * 3 // 4:
        value += next(rng) % 7 - 3
        out += i.to_bytes(4, "little") + (value & 0xFFFF).to_bytes(2, "little")
        out += bytes([next(rng) % 4, 0, 0xFF, i & 0x0F])
        i += 1
    while len(out) < n:
        out += next(rng).to_bytes(4, "little")
    return bytes(out[:n])


def long_text_input() -> bytes:
    """Longer than the engine's 64 KiB coding segment, in one block, so that the model
    state carried from one segment to the next is covered too."""
    return text_input(70000, seed=2024)


INPUTS = {"text": text_input, "binary": binary_input, "long": long_text_input}
BLOCK_SIZES = {"long": 1 << 20}           # the others use BLOCK_SIZE


def main() -> None:
    sys.path.insert(0, os.path.dirname(os.path.dirname(HERE)))
    import ssmzip

    for name, make in INPUTS.items():
        data = make()
        with open(os.path.join(HERE, f"{name}.bin"), "wb") as f:
            f.write(data)
        for level in LEVELS:
            blob = ssmzip.compress(data, level=level, block_size=BLOCK_SIZES.get(name, BLOCK_SIZE))
            assert ssmzip.decompress(blob) == data
            path = os.path.join(HERE, f"{name}-{level}.ssz")
            with open(path, "wb") as f:
                f.write(blob)
            print(f"{path}: {len(data)} -> {len(blob)} bytes")


if __name__ == "__main__":
    main()
