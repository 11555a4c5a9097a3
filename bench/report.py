"""The bench's outputs: machine description, Markdown table, target checks, plot."""
from __future__ import annotations

import datetime
import os
import platform
import socket
import subprocess
import sys

from .systems import LABELS, REFERENCE

MB = 1e6


def machine_info() -> dict:
    info = {"host": socket.gethostname(), "date": datetime.datetime.now().isoformat(timespec="seconds")}
    info["cpu"] = cpu_model()
    info["cores"] = os.cpu_count()
    try:
        info["cores usable"] = len(os.sched_getaffinity(0))
    except AttributeError:
        pass
    info["ram"] = _meminfo_total()
    info["os"] = _os_name() + f" ({platform.system()} {platform.release()}, {platform.machine()})"
    info["load average at start"] = " ".join(f"{x:.2f}" for x in os.getloadavg())
    info["python"] = platform.python_version() + f" ({sys.executable})"
    for mod in ("numpy", "numba"):
        info[mod] = _module_version(mod)
    info["ssmzip"] = _module_version("ssmzip")
    info["git commit"] = _git_commit()
    return info


def cpu_model() -> str:
    """The CPU's model name (from /proc/cpuinfo where there is one)."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith(("model name", "Model", "cpu model")):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _meminfo_total() -> str:
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemTotal:"):
                    return f"{int(line.split()[1]) / 2**20:.1f} GiB"
    except OSError:
        pass
    return "unknown"


def _os_name() -> str:
    try:
        with open("/etc/os-release") as f:
            for line in f:
                if line.startswith("PRETTY_NAME="):
                    return line.split("=", 1)[1].strip().strip('"')
    except OSError:
        pass
    return platform.platform()


def _module_version(name) -> str:
    try:
        from importlib.metadata import version
        return version(name)
    except Exception:
        pass
    try:
        mod = __import__(name)
        return getattr(mod, "__version__", "installed, version unknown")
    except Exception:
        return "not installed"


def _git_commit() -> str:
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    try:
        head = subprocess.run(["git", "-C", root, "rev-parse", "--short=12", "HEAD"],
                              capture_output=True, text=True, timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "-C", root, "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=10).stdout.strip()
        return (head + (" (with uncommitted changes)" if dirty else "")) or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


# ---------------------------------------------------------------- table

def _speed(v) -> str:
    if v is None:
        return "—"
    return f"{v:.3g}" if v < 100 else f"{v:.0f}"


def rows_with_ratios(results):
    """Add bpb, ratio to the reference peer and speeds to each result dict."""
    ref = {}
    for r in results:
        if r["system"] == LABELS[REFERENCE] and r["ok"]:
            ref[r["input"]] = r["bytes"]
    for r in results:
        n = r["input_bytes"]
        r["bpb"] = 8 * r["bytes"] / n if r["ok"] and n else None
        r["vs_ref"] = r["bytes"] / ref[r["input"]] if r["ok"] and r["input"] in ref else None
        r["comp_mbs"] = n / MB / r["comp_s"] if r["ok"] and r["comp_s"] else None
        r["decomp_mbs"] = n / MB / r["decomp_s"] if r["ok"] and r["decomp_s"] else None
    return results


def markdown_table(results) -> str:
    head = ("| input | system | bytes | bpb | vs xz -9e | compress MB/s | decompress MB/s "
            "| peak RSS MB | round trip |\n|---|---|--:|--:|--:|--:|--:|--:|---|")
    lines = [head]
    for r in results:
        if r["ok"]:
            lines.append(
                f"| {r['input']} | {r['system']} | {r['bytes']:,} | {r['bpb']:.3f} | "
                f"{'—' if r['vs_ref'] is None else format(r['vs_ref'], '.3f')} | "
                f"{_speed(r['comp_mbs'])} | {_speed(r['decomp_mbs'])} | "
                f"{r['peak_rss'] / 2**20:.0f} | ok |")
        else:
            lines.append(f"| {r['input']} | {r['system']} | — | — | — | — | — | — | "
                         f"**FAILED: {r['error']}** |")
    return "\n".join(lines)


# ---------------------------------------------------------------- targets

def check_targets(results) -> list:
    """The issue's targets on enwik8_1M (and 3M), for rows present: [(text, passed)]."""
    by = {(r["input"], r["system"]): r for r in results if r["ok"]}
    checks = []

    def get(inp, system):
        return by.get((inp, system))

    def ours(inp, level):
        """The single-process row of a level: 'ssmzip -6', 'ssmzip -6 -T1', 'ssmzip -6 (api)', or
        with --backends the default backend's row, 'ssmzip -6 (native)'."""
        for name in (f"ssmzip -{level}", f"ssmzip -{level} -T1", f"ssmzip -{level} (api)",
                     f"ssmzip -{level} (native)"):
            if get(inp, name):
                return get(inp, name)
        return None

    one, three = "enwik8_1M", "enwik8_3M"
    lp, pq, xz = get(one, LABELS["lpaq1"]), get(one, LABELS["paq8px"]), get(one, LABELS["xz"])
    s6, s9, s1 = ours(one, 6), ours(one, 9), ours(one, 1)
    if s6:
        checks.append((f"-6 ≤ 1.80 bpb on 1M ({s6['bpb']:.3f})", s6["bpb"] <= 1.80))
        if lp:
            checks.append((f"-6 compresses at least as fast as lpaq1 9 ({_speed(s6['comp_mbs'])} vs "
                           f"{_speed(lp['comp_mbs'])} MB/s)", s6["comp_mbs"] >= lp["comp_mbs"]))
        checks.append((f"-6 decompress within 15 % of compress ({_speed(s6['decomp_mbs'])} vs "
                       f"{_speed(s6['comp_mbs'])} MB/s)", s6["decomp_mbs"] >= 0.85 * s6["comp_mbs"]))
        checks.append((f"-6 peak RSS ≤ 400 MB ({s6['peak_rss'] / 2**20:.0f})", s6["peak_rss"] <= 400 * 2**20))
    if s9:
        checks.append((f"-9 ≤ 1.70 bpb on 1M ({s9['bpb']:.3f})", s9["bpb"] <= 1.70))
        if pq:
            checks.append((f"-9 at least 3x the speed of paq8px -8 ({_speed(s9['comp_mbs'])} vs "
                           f"{_speed(pq['comp_mbs'])} MB/s)", s9["comp_mbs"] >= 3 * pq["comp_mbs"]))
        checks.append((f"-9 peak RSS ≤ 1.5 GB ({s9['peak_rss'] / 2**20:.0f} MB)",
                       s9["peak_rss"] <= 1.5 * 2**30))
    if s1 and xz:
        checks.append((f"-1 smaller than xz -9e ({s1['bytes']:,} vs {xz['bytes']:,})",
                       s1["bytes"] < xz["bytes"]))
        checks.append((f"-1 faster than xz -9e and ≥ 1 MB/s ({_speed(s1['comp_mbs'])} vs "
                       f"{_speed(xz['comp_mbs'])} MB/s)",
                       s1["comp_mbs"] >= max(1.0, xz["comp_mbs"])))
    for r in results:
        if r["ok"] and r["input"] == three and r["system"].startswith("ssmzip"):
            r1 = get(one, r["system"])
            if r1:
                checks.append((f"{r['system']}: 3M bpb below 1M bpb ({r['bpb']:.3f} vs {r1['bpb']:.3f})",
                               r["bpb"] < r1["bpb"]))
    checks += _ssm_checks(get, pq)
    checks += _native_checks(get, lp, pq)
    # -T scaling: any input measured with -T1 and -T2 at the same level
    for r in results:
        if r["ok"] and r["system"].endswith(" -T2"):
            r1 = get(r["input"], r["system"][:-1] + "1")
            if r1:
                ratio = r["comp_mbs"] / r1["comp_mbs"]
                checks.append((f"{r['input']}: {r['system']} ≥ 1.7x the speed of -T1 ({ratio:.2f}x; "
                               "needs an input of ≥ 4 blocks)", ratio >= 1.7))
                checks.append((f"{r['input']}: {r['system']} gives the same bytes as -T1",
                               r["sha256"] == r1["sha256"]))
    return checks


STATESMIX_1M_BYTES = 265_370      # StateSMix's full system on enwik8_1M (issue 4)
STATESMIX_KBS = 5.4               # its speed in ../shared/DESIGN.md (both cores), not measured here
SSM_TARGET_BPB = {"enwik8_1M": 1.64, "enwik8_3M": 1.58}


def _ssm_checks(get, pq) -> list:
    """Issue 4's targets, from the ablation rows (--ablation LEVEL) present."""
    checks = []
    for inp, bpb_target in SSM_TARGET_BPB.items():
        for level in range(1, 10):
            full, cm = get(inp, f"ssmzip -{level} CM + SSM"), get(inp, f"ssmzip -{level} CM alone")
            alone = get(inp, f"ssmzip -{level} SSM alone")
            if not full:
                continue
            tag = f"[SSM] {inp} -{level}"
            checks.append((f"{tag} ≤ {bpb_target} bpb ({full['bpb']:.3f})", full["bpb"] <= bpb_target))
            if cm:
                share = 1 - full["bytes"] / cm["bytes"]
                checks.append((f"{tag}: the SSM's share ≥ 3 % of the size without it ({100 * share:.2f} %)",
                               share >= 0.03))
            if alone and inp == "enwik8_1M":
                checks.append((f"{tag}: the SSM alone smaller than StateSMix ({alone['bytes']:,} vs "
                               f"{STATESMIX_1M_BYTES:,} B)", alone["bytes"] < STATESMIX_1M_BYTES))
            if pq and inp == "enwik8_1M":
                checks.append((f"{tag} compresses ≥ 4x paq8px -8's speed, same run ({_speed(full['comp_mbs'])}"
                               f" vs {_speed(pq['comp_mbs'])} MB/s, {full['comp_mbs'] / pq['comp_mbs']:.1f}x)",
                               full["comp_mbs"] >= 4 * pq["comp_mbs"]))
            kbs = full["comp_mbs"] * 1000
            checks.append((f"{tag} compresses ≥ 3x StateSMix's {STATESMIX_KBS} KB/s (DESIGN.md figure, "
                           f"not this run: {kbs:.1f} KB/s, {kbs / STATESMIX_KBS:.1f}x)",
                           kbs >= 3 * STATESMIX_KBS))
            checks.append((f"{tag} decompress within 15 % of compress ({_speed(full['decomp_mbs'])} vs "
                           f"{_speed(full['comp_mbs'])} MB/s)", full["decomp_mbs"] >= 0.85 * full["comp_mbs"]))
            checks.append((f"{tag} peak RSS ≤ 1.5 GB ({full['peak_rss'] / 2**20:.0f} MB)",
                           full["peak_rss"] <= 1.5 * 2**30))
    return checks


def _native_checks(get, lp, pq) -> list:
    """Issue 7's targets, from rows forced to each backend (--backends native,numba)."""
    checks = []
    one = "enwik8_1M"
    for level, factor in ((6, 2), (9, 3), (1, None)):
        nat, nb = get(one, f"ssmzip -{level} (native)"), get(one, f"ssmzip -{level} (numba)")
        if not (nat and nb):
            continue
        tag = f"[native] -{level}"
        ratio = nat["comp_mbs"] / nb["comp_mbs"]
        if factor:
            checks.append((f"{tag} ≥ {factor}x numba ({ratio:.2f}x: {_speed(nat['comp_mbs'])} vs "
                           f"{_speed(nb['comp_mbs'])} MB/s)", ratio >= factor))
        checks.append((f"{tag}: the same bytes as numba", nat["sha256"] == nb["sha256"]))
        if level == 6 and lp:
            checks.append((f"{tag} ≥ 2x lpaq1 9's speed ({nat['comp_mbs'] / lp['comp_mbs']:.2f}x)",
                           nat["comp_mbs"] >= 2 * lp["comp_mbs"]))
        if level == 9 and pq:
            checks.append((f"{tag} ≥ 10x paq8px -8's speed ({nat['comp_mbs'] / pq['comp_mbs']:.1f}x)",
                           nat["comp_mbs"] >= 10 * pq["comp_mbs"]))
    return checks


# ---------------------------------------------------------------- files

def write_report(outdir, info, systems_notes, missing, results, checks, notes, args_line):
    os.makedirs(outdir, exist_ok=True)
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    base = os.path.join(outdir, f"bench-{info['host']}-{stamp}")
    parts = [f"# ssmzip bench, {info['host']}, {info['date']}", "", f"Command: `{args_line}`", "",
             "## Machine", ""]
    parts += [f"- {k}: {v}" for k, v in info.items()]
    parts += ["", "## Systems", ""]
    parts += [f"- {name}: {note}" for name, note in systems_notes]
    if missing:
        parts += [f"- **missing** (not on PATH or the peers path): {', '.join(missing)}"]
    parts += ["", "## Results", "", markdown_table(results), ""]
    if checks:
        parts += ["## Targets (issue 3; [SSM]: issue 4)", ""]
        parts += [f"- [{'x' if ok else ' '}] {text}" for text, ok in checks]
        parts += [""]
    if notes:
        parts += ["## Notes", ""] + [f"- {n}" for n in notes] + [""]
    png = base + ".png"
    plot_note = plot(results, png)
    if plot_note:
        parts += [f"Plot: {plot_note}", ""]
    else:
        parts += [f"![bpb vs compress speed]({os.path.basename(png)})", ""]
    md = base + ".md"
    with open(md, "w") as f:
        f.write("\n".join(parts))
    return md, (None if plot_note else png)


def plot(results, path):
    """bpb against compress speed (log x), one panel per input. Returns None, or why not."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return "skipped (matplotlib is not installed: pip install matplotlib, or the 'bench' extra)"
    inputs = list(dict.fromkeys(r["input"] for r in results))
    rows = [r for r in results if r["ok"] and r["comp_mbs"]]
    if not rows:
        return "skipped (no successful runs)"
    cols = min(3, len(inputs))
    nrows = (len(inputs) + cols - 1) // cols
    fig, axes = plt.subplots(nrows, cols, figsize=(5.5 * cols, 4.2 * nrows), squeeze=False)
    for ax, inp in zip(axes.flat, inputs):
        for r in (r for r in rows if r["input"] == inp):
            ours = r["system"].startswith("ssmzip")
            ax.scatter(r["comp_mbs"], r["bpb"], marker="o" if ours else "s",
                       color="tab:red" if ours else "tab:blue")
            ax.annotate(r["system"], (r["comp_mbs"], r["bpb"]), fontsize=7,
                        xytext=(3, 3), textcoords="offset points")
        ax.set_xscale("log")
        ax.set_title(inp)
        ax.set_xlabel("compress speed, MB/s (log)")
        ax.set_ylabel("bits per byte")
        ax.grid(True, which="both", alpha=0.3)
    for ax in list(axes.flat)[len(inputs):]:
        ax.set_visible(False)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return None
