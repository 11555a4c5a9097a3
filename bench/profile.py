"""Where the coding time goes: each level's kernel timed with one part removed.

    python -m bench.profile [--levels 1,6,9] [--bytes 1000000] [--backend auto|native|numba]

Times encode_block (in this process, after a warm-up, so no start-up or
compile time) on the first --bytes of enwik8_1M ($SSMZIP_CORPORA or
--corpora), best of --repeat runs, for the level as shipped and for variants
that each drop one part: the run inputs, the second and third mixers, the
third APM, the match model, half the contexts; at SSM levels also the SSM
(context models alone) and everything but the SSM (its probability straight
to the coder). "cost" is the time the part adds, the level's time minus the
variant's: parts interact (fewer inputs make the mixers cheaper too), so the
costs are estimates that need not add up.
"""
from __future__ import annotations

import argparse
import os
import time
from dataclasses import replace

from ssmzip.engine import LEVELS, encode_block, native, ssm_only, without_ssm


def variants(preset):
    """(name, preset) pairs: the level, then one part removed at a time."""
    out = [("as shipped", preset)]
    if preset.has_ssm:
        out.append(("without the SSM", without_ssm(preset)))
        out.append(("the SSM alone", ssm_only(preset)))
        preset_cm = without_ssm(preset)
    else:
        preset_cm = preset
    if preset_cm.runs:
        out.append(("without run inputs", replace(preset, runs=0)))
    if preset_cm.mixers > 1:
        out.append(("one mixer", replace(preset, mixers=1)))
    if preset_cm.apms > 2:
        out.append(("two APMs", replace(preset, apms=2)))
    if preset_cm.match_min:
        out.append(("without the match model", replace(preset, match_min=0)))
    n = len(preset_cm.contexts)
    if n > 2:
        out.append((f"first {n // 2} of {n} contexts", replace(preset, contexts=preset_cm.contexts[:n // 2])))
    return out


def best_time(data, preset, repeat):
    best = None
    for _ in range(repeat):
        t0 = time.perf_counter()
        size = len(encode_block(data, preset))
        t = time.perf_counter() - t0
        best = t if best is None or t < best else best
    return best, size


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--levels", default="1,6,9")
    ap.add_argument("--bytes", type=int, default=1_000_000)
    ap.add_argument("--repeat", type=int, default=2)
    ap.add_argument("--corpora", default=os.environ.get("SSMZIP_CORPORA"))
    ap.add_argument("--backend", choices=("auto", "native", "numba"), default="auto")
    args = ap.parse_args(argv)
    if not args.corpora:
        raise SystemExit("profile: give --corpora or set SSMZIP_CORPORA (a directory with enwik8_1M)")
    with open(os.path.join(args.corpora, "enwik8_1M"), "rb") as f:
        data = f.read(args.bytes)
    if args.backend != "auto":
        os.environ[native.ENV] = args.backend
    print(f"backend: {native.describe()}; {len(data):,} bytes of enwik8_1M; kernel time only, "
          f"best of {args.repeat}")
    encode_block(data[:4096], LEVELS[9])             # load both kernels before timing
    encode_block(data[:4096], LEVELS[1])
    for level in (int(x) for x in args.levels.split(",")):
        preset = replace(LEVELS[level], block_bits=max(LEVELS[level].block_bits, len(data).bit_length()))
        print(f"\n-{level}: | variant | bytes | us/byte | cost of the part removed |")
        print("|---|--:|--:|--:|")
        base = None
        for name, p in variants(preset):
            t, size = best_time(data, p, args.repeat)
            us = 1e6 * t / len(data)
            cost = "" if base is None else f"{base - us:+.2f} us/byte ({100 * (base - us) / base:.0f} %)"
            base = us if base is None else base
            print(f"| {name} | {size:,} | {us:.2f} | {cost} |", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
