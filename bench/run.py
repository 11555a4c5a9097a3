"""Compare ssmzip's levels with xz, zstd, bzip2, brotli, lpaq1 and paq8px.

    python -m bench.run [--corpora DIR] [--peers-path DIR] [options]

Each (system, input) pair is compressed and decompressed as a separate process
(the whole process is timed), the round trip is checked byte for byte, and a
Markdown table, a plot and a JSON file are written to --out. See bench/README.md.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import shlex
import statistics
import subprocess
import sys
import tempfile

if __package__ in (None, ""):              # `python bench/run.py`: make the checkout importable
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from bench import measure, report, systems  # noqa: E402
from corpora.generate import GENERATORS, generate, size_label  # noqa: E402

ENWIK = ("enwik8_1M", "enwik8_3M")
DEFAULT_OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")
PRETOUCH_MB = 1536                 # above the largest peak RSS in the tables (about 1.3 GB)


def parse_args(argv=None):
    ap = argparse.ArgumentParser(prog="python -m bench.run", description=__doc__.split("\n")[0])
    ap.add_argument("--corpora", default=os.environ.get("SSMZIP_CORPORA"),
                    help="directory with enwik8_1M, enwik8_3M (default: $SSMZIP_CORPORA)")
    ap.add_argument("--peers-path", default=os.environ.get("SSMZIP_PEERS_PATH"),
                    help="extra directories (colon-separated) searched for peer programs before "
                         "$PATH (default: $SSMZIP_PEERS_PATH)")
    ap.add_argument("--levels", default="1,6,9", help="ssmzip levels, comma-separated, or 'none'")
    ap.add_argument("--threads", default="1",
                    help="ssmzip -T values, comma-separated (e.g. 1,2 to measure scaling)")
    ap.add_argument("--block-size", help="ssmzip --block-size (passed through to the CLI)")
    ap.add_argument("--backends", default="auto",
                    help="ssmzip coding backends, comma-separated: auto, native, numba "
                         "(e.g. native,numba compares them in one run)"),
    ap.add_argument("--peers", default=",".join(systems.PEERS),
                    help=f"peers to run, comma-separated, or 'none' (default: all of "
                         f"{','.join(systems.PEERS)})")
    ap.add_argument("--skip-slow", action="store_true", help="skip paq8px (about 1 KB/s)")
    ap.add_argument("--inputs", "--only", dest="inputs",
                    help="inputs to use, comma-separated: " + ",".join(ENWIK + tuple(GENERATORS))
                         + " (default: all available)")
    ap.add_argument("--gen-size", type=int, default=1_000_000,
                    help="bytes of each generated corpus (default 1000000)")
    ap.add_argument("--seed", type=int, default=0, help="seed of the generated corpora")
    ap.add_argument("--repeat", type=int, default=1,
                    help="runs per measurement, in rounds (every system once per round); "
                         "the median is reported")
    ap.add_argument("--timeout", type=float, default=7200, help="seconds allowed per process")
    ap.add_argument("--pretouch", type=int, default=PRETOUCH_MB, metavar="MB",
                    help="before every timed process, have a helper process write this many MB "
                         f"(untimed; 0: off; default {PRETOUCH_MB}): on a VM, memory the guest has "
                         "handed back to its host costs 1-3 s a GB to touch again, and without this "
                         "whether a run pays it depends on what ran just before it")
    ap.add_argument("--out", default=DEFAULT_OUT, help="where reports go (default bench/results/)")
    ap.add_argument("--tmpdir", help="where inputs are generated and outputs written (default: system temp)")
    ap.add_argument("--ssmzip-mode", choices=("auto", "cli", "api"), default="auto",
                    help="run ssmzip through its CLI (python -m ssmzip) or the engine API "
                         "(bench/api_runner.py); auto = the CLI when it exists")
    ap.add_argument("--ablation", type=int, metavar="LEVEL",
                    help="also run the SSM ablation at LEVEL: context models alone, SSM alone, both")
    ap.add_argument("--list", action="store_true", help="list the systems found and exit")
    return ap.parse_args(argv)


def _csv(s):
    return [x.strip() for x in s.split(",") if x.strip()] if s and s.strip() != "none" else []


def select_systems(args):
    notes = []
    names = _csv(args.peers)
    unknown = [n for n in names if n not in systems.PEERS]
    if unknown:
        raise SystemExit(f"bench: unknown peer(s) {', '.join(unknown)}; known: {', '.join(systems.PEERS)}")
    if args.skip_slow:
        names = [n for n in names if not systems.PEERS[n][3]]
    peers, missing = systems.find_peers(names, args.peers_path)
    levels = [int(x) for x in _csv(args.levels)]
    if any(not 1 <= lv <= 9 for lv in levels):
        raise SystemExit("bench: levels are 1..9")
    threads = [int(x) for x in _csv(args.threads)] or [1]
    mode = (systems.ssmzip_mode() if args.ssmzip_mode == "auto" else args.ssmzip_mode) if levels else ""
    backends = _csv(args.backends) or ["auto"]
    if any(b not in systems.BACKENDS for b in backends):
        raise SystemExit(f"bench: --backends takes {', '.join(systems.BACKENDS)}")
    ours = systems.ssmzip_systems(levels, threads, args.block_size, mode, backends) if mode else []
    if args.ablation is not None:
        if not 1 <= args.ablation <= 9:
            raise SystemExit("bench: --ablation takes a level, 1..9")
        ours += systems.ablation_systems(args.ablation)
    if levels and not mode:
        notes.append("ssmzip is not importable: no ssmzip rows (pip install -e . in the checkout)")
    if mode == "api":
        notes.append("ssmzip CLI not found: ssmzip rows use the engine API through bench/api_runner.py "
                     "(one block, a 9-byte bench-private header, --threads/--block-size ignored)")
    if mode == "cli" and args.block_size and "--block-size" not in systems.cli_help():
        notes.append("the ssmzip CLI shows no --block-size option in --help; runs may fail")
    return ours + peers, missing, notes


def select_inputs(args, tmp):
    """-> ([(name, path)], notes). Generated corpora are written into tmp."""
    wanted = set(_csv(args.inputs)) if args.inputs else None
    unknown = (wanted or set()) - set(ENWIK) - set(GENERATORS)
    if unknown:
        raise SystemExit(f"bench: unknown input(s) {', '.join(sorted(unknown))}; known: "
                         f"{', '.join(ENWIK + tuple(GENERATORS))}")
    inputs, notes = [], []
    for name in ENWIK:
        if wanted is not None and name not in wanted:
            continue
        path = os.path.join(args.corpora, name) if args.corpora else None
        if path and os.path.isfile(path):
            inputs.append((name, path))
        else:
            notes.append(f"{name} skipped: not found "
                         + (f"in {args.corpora}" if args.corpora else "(no --corpora / $SSMZIP_CORPORA)")
                         + "; see bench/README.md for where to get enwik8")
    for name in GENERATORS:
        if wanted is not None and name not in wanted:
            continue
        label = f"{name}_{size_label(args.gen_size)}"
        path = os.path.join(tmp, label)
        with open(path, "wb") as f:
            f.write(generate(name, args.gen_size, args.seed))
        inputs.append((label, path))
    return inputs, notes


def source_fingerprint():
    """Sizes and mtimes of ssmzip's sources: a change during the run makes it unreliable."""
    root = systems.ssmzip_root()
    if not root:
        return None
    out = []
    for d, _, files in sorted(os.walk(os.path.join(root, "ssmzip"))):
        for f in sorted(files):
            if f.endswith((".py", ".c", ".h")):
                st = os.stat(os.path.join(d, f))
                out.append((os.path.join(d, f), st.st_size, st.st_mtime_ns))
    return out


def _sha256(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _new_result(system, name, size):
    return {"input": name, "input_bytes": size, "system": system.name, "ok": False, "error": "",
            "bytes": None, "sha256": None, "comp_s": None, "decomp_s": None, "peak_rss": 0,
            "comp_cpu_s": None, "decomp_cpu_s": None,
            "_times": ([], [], [], []), "_digests": set()}


def pretouch(mb: int) -> None:
    """Write `mb` MB in a short-lived process, so that the next process finds that much
    memory backed by the VM's host (measured on the 2-core VM: an ssmzip -9 run on
    300 KB took 11.5 s after 8 s idle, 8.3-10.1 s right after such a helper)."""
    try:                        # never more than half the machine's memory
        mb = min(mb, os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE") // 2 >> 20)
    except (AttributeError, ValueError, OSError):
        pass
    if mb > 0:
        subprocess.run([sys.executable, "-c", f"b = b'\\1' * ({mb} << 20)"], check=False)


def _step(step, template, inp, outp, work, env, args, res, times, cpus):
    """Run one compress or decompress command, timed; False (and res["error"]) on failure."""
    argv, stdout = systems.expand(template, inp, outp)
    pretouch(getattr(args, "pretouch", 0))
    r = measure.run(argv, stdout_path=stdout, cwd=work, env=env, timeout=args.timeout)
    if not r.ok:
        res["error"] = _why(step, r)
        return False
    times.append(r.seconds)
    cpus.append(r.cpu_seconds)
    res["peak_rss"] = max(res["peak_rss"], r.peak_rss)
    return True


def _run_once(system, path, work, args, res):
    """Compress and decompress `path` once, adding the times to `res`; False on failure."""
    env = system.env or None
    comp_t, decomp_t, comp_cpu, decomp_cpu = res["_times"]
    cpath, dpath = os.path.join(work, "compressed"), os.path.join(work, "decompressed")
    for p in (cpath, dpath):
        if os.path.exists(p):
            os.unlink(p)
    if not _step("compress", system.compress, path, cpath, work, env, args, res, comp_t, comp_cpu):
        return False
    res["bytes"] = os.path.getsize(cpath)
    res["_digests"].add(_sha256(cpath))
    if not _step("decompress", system.decompress, cpath, dpath, work, env, args, res, decomp_t, decomp_cpu):
        return False
    if not measure.files_equal(path, dpath):
        size = res["input_bytes"]
        res["error"] = (f"ROUND TRIP MISMATCH: decompressed {os.path.getsize(dpath):,} bytes "
                        f"differ from the {size:,}-byte input")
        return False
    return True


def _finish(res, repeat):
    comp_t, decomp_t, comp_cpu, decomp_cpu = res.pop("_times")
    digests = res.pop("_digests")
    if res["error"]:
        return res
    if len(digests) > 1:
        res["error"] = f"NONDETERMINISTIC: {len(digests)} different outputs in {repeat} runs"
        return res
    res.update(ok=True, sha256=digests.pop(), comp_s=statistics.median(comp_t),
               decomp_s=statistics.median(decomp_t), comp_cpu_s=statistics.median(comp_cpu),
               decomp_cpu_s=statistics.median(decomp_cpu))
    return res


def bench_input(chosen, name, path, work, args):
    """Every system on `path`, args.repeat rounds; return a result dict per system.

    In each round every system runs once, in turn, so that a drift of the
    machine's speed (this shared VM moves by 20 % and more within minutes)
    falls on all of them alike and their ratios (-T2 against -T1, ssmzip
    against a peer) stay meaningful; each time reported is a median."""
    size = os.path.getsize(path)
    results = [_new_result(s, name, size) for s in chosen]
    for _ in range(args.repeat):
        for s, res in zip(chosen, results):
            if not res["error"]:
                _run_once(s, path, work, args, res)
    return [_finish(res, args.repeat) for res in results]


def _why(step, r):
    if r.timed_out:
        return f"{step} timed out"
    last = r.stderr.strip().splitlines()[-1:] or [""]
    return f"{step} exit {r.returncode}: {last[0][:200]}"


def warm_up(ours, work, args):
    """Compile/load numba caches once, untimed, so the table measures steady use."""
    sample = os.path.join(work, "warmup")
    with open(sample, "wb") as f:
        f.write(generate("text", 65536, 1))
    for s in ours:
        r, = bench_input([s], "warm-up", sample, work, argparse.Namespace(repeat=1, timeout=args.timeout))
        if not r["ok"]:
            print(f"  warm-up of {s.name} failed: {r['error']}", file=sys.stderr)


def _progress(r):
    if not r["ok"]:
        return f"  {r['system']:<24} FAILED: {r['error']}"
    n = r["input_bytes"]
    return (f"  {r['system']:<24} {r['bytes']:>12,} B  {8 * r['bytes'] / n:6.3f} bpb  "
            f"c {n / 1e6 / r['comp_s']:9.4f} MB/s  d {n / 1e6 / r['decomp_s']:9.4f} MB/s  "
            f"{r['peak_rss'] / 2**20:7.0f} MB")


def main(argv=None) -> int:
    args = parse_args(argv)
    chosen, missing, notes = select_systems(args)
    for s in chosen:
        print(f"system  {s.name:<24} {s.version or s.notes}", file=sys.stderr)
    for m in missing:
        print(f"MISSING {systems.LABELS[m]:<24} not found on "
              f"{'--peers-path/$SSMZIP_PEERS_PATH or ' if args.peers_path else ''}$PATH", file=sys.stderr)
    if args.list:
        return 0
    if not chosen:
        print("bench: nothing to run", file=sys.stderr)
        return 1
    results = []
    fingerprint = source_fingerprint()
    with tempfile.TemporaryDirectory(prefix="ssmzip-bench-", dir=args.tmpdir) as tmp:
        inputs, input_notes = select_inputs(args, tmp)
        notes += input_notes
        for n in input_notes:
            print(f"note: {n}", file=sys.stderr)
        work = os.path.join(tmp, "work")
        os.makedirs(work)
        ours = [s for s in chosen if s.family == "ssmzip"]
        if ours and inputs:
            print("warming up ssmzip (numba compile cache) ...", file=sys.stderr)
            warm_up(ours, work, args)
        for name, path in inputs:
            print(f"{name} ({os.path.getsize(path):,} bytes)", file=sys.stderr)
            for r in bench_input(chosen, name, path, work, args):
                print(_progress(r), file=sys.stderr, flush=True)
                results.append(r)
    if any(s.family == "ssmzip" for s in chosen) and source_fingerprint() != fingerprint:
        notes.append("**WARNING: ssmzip's source files changed during this run**: its rows may mix "
                     "two versions of the code (a failed round trip can come from that alone)")
        print(f"WARNING: {notes[-1]}", file=sys.stderr)
    report.rows_with_ratios(results)
    checks = report.check_targets(results)
    info = report.machine_info()
    sys_notes = [(s.name, f"{s.version} ({s.notes})" if s.version else s.notes) for s in chosen]
    notes.append(f"times are the median of {args.repeat} run(s) of the whole process; peak RSS is the "
                 "largest single process (os.wait4); MB = 10^6 bytes for speeds, 2^20 for RSS")
    if args.pretouch:
        notes.append(f"before every timed process a helper process wrote {args.pretouch} MB (untimed), "
                     "so that every run starts with memory the VM's host has backed (--pretouch)")
    if any(s.family == "ssmzip" for s in chosen):
        notes.append("ssmzip was run once untimed on 64 KB before measuring, to fill the numba cache")
    failures = [r for r in results if not r["ok"]]
    if failures:
        notes.append(f"**{len(failures)} FAILED run(s)**: see the table")
    args_line = "python -m bench.run " + " ".join(shlex.quote(a) for a in (argv or sys.argv[1:]))
    md, png = report.write_report(args.out, info, sys_notes, [systems.LABELS[m] for m in missing],
                                  results, checks, notes, args_line)
    with open(md[:-3] + ".json", "w") as f:
        json.dump({"machine": info, "results": results, "missing": missing, "notes": notes}, f, indent=1)
    print()
    print(report.markdown_table(results))
    for text, ok in checks:
        print(f"- [{'x' if ok else ' '}] {text}")
    for m in missing:
        print(f"MISSING: {systems.LABELS[m]}")
    print(f"\nwrote {md}" + (f" and {png}" if png else ""))
    if failures:
        print(f"\n*** {len(failures)} FAILED run(s): " +
              "; ".join(f"{r['system']} on {r['input']}: {r['error']}" for r in failures), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
