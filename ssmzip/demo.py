"""``python -m ssmzip.demo``: compress and decompress a built-in sample, show the result.

The sample is generated text (seeded, English-like word statistics), so the
demo needs no download. Give a FILE to try your own data instead. xz's
numbers (Python's lzma, preset 9e) are printed beside ours for scale.
"""
from __future__ import annotations

import lzma
import random
import sys
import time

import click

from . import compress, decompress
from .engine import DEFAULT_LEVEL

_WORDS = ("the of and to in a is that for it as was with be by on not he this are or his "
          "from at which but have an they you were her she there been one all we their "
          "would when who will more no if out so said what up its about into than them can "
          "only other new some could time these two may then do first any my now such like "
          "our over man me even most made after also did many before must through years "
          "where much your way well down should because each just those people how too "
          "little state good very make world still own see men work long get here between "
          "both life being under never day same another know while last might us great old "
          "year off come since against go came right used take three").split()


def sample_text(size: int = 256 << 10, seed: int = 2024) -> bytes:
    """English-like text: Zipf-distributed words, sentences, paragraphs."""
    rng = random.Random(seed)
    weights = [1 / (i + 1) for i in range(len(_WORDS))]
    out, n, sentence = [], 0, 0
    while n < size:
        words = rng.choices(_WORDS, weights, k=rng.randint(6, 18))
        s = " ".join(words).capitalize() + (". " if rng.random() < 0.9 else "? ")
        sentence += 1
        if sentence % 6 == 0:
            s += "\n\n"
        out.append(s)
        n += len(s)
    return "".join(out).encode()[:size]


@click.command()
@click.option("-l", "--level", type=click.IntRange(1, 9), default=DEFAULT_LEVEL,
              show_default=True, help="Compression level.")
@click.option("--size", type=click.IntRange(1, 1 << 30), default=256 << 10, show_default=True,
              help="Bytes of generated sample text.")
@click.argument("file", type=click.File("rb"), required=False)
def main(level: int, size: int, file) -> None:
    """Compress and decompress a sample (or FILE) and print sizes and speeds."""
    data = file.read() if file is not None else sample_text(size)
    what = file.name if file is not None else "generated English-like text"
    click.echo(f"input:        {what}, {len(data):,} bytes")
    from .engine import native
    try:
        native.cm_kernel()
    except native.BackendError as e:
        raise click.ClickException(str(e)) from None
    click.echo(f"backend:      {native.describe()}")
    if level >= 7 or not native.describe().startswith("native"):
        click.echo("(the first run compiles the numba engine, which takes a while; it is cached after)")

    t0 = time.perf_counter()
    blob = compress(data, level=level)
    t1 = time.perf_counter()
    back = decompress(blob)
    t2 = time.perf_counter()
    xz = lzma.compress(data, preset=9 | lzma.PRESET_EXTREME)

    def line(name, n, secs=None):
        bpb = 8 * n / len(data) if data else 0.0
        speed = f", {len(data) / secs / 1e3:8.1f} KB/s" if secs else ""
        click.echo(f"{name:<13} {n:>10,} bytes  {bpb:6.3f} bits/byte{speed}")

    line(f"ssmzip -{level}:", len(blob), t1 - t0)
    line("xz -9e:", len(xz))
    click.echo(f"decompressed: {len(back):,} bytes in {t2 - t1:.2f} s "
               f"({len(data) / max(t2 - t1, 1e-9) / 1e3:.1f} KB/s)")
    if back != data:
        click.echo("round trip: FAILED", err=True)
        sys.exit(1)
    click.echo("round trip:   OK (identical bytes)")


if __name__ == "__main__":
    main()
