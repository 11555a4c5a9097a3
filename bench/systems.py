"""The compressors the bench runs: ssmzip levels and the peers, found on PATH.

A system is two argument templates, one to compress and one to decompress.
``{in}`` and ``{out}`` are replaced by file paths; a template without ``{out}``
writes to stdout, which the bench sends to the output file.

Peers are looked for first in the directories of ``--peers-path`` /
``$SSMZIP_PEERS_PATH`` (colon-separated), then on ``$PATH``. They are built
outside this repository; see bench/README.md.
"""
from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass, field


@dataclass
class System:
    name: str
    compress: list
    decompress: list
    family: str = "peer"           # "peer" | "ssmzip"
    slow: bool = False             # skipped by --skip-slow
    version: str = ""
    env: dict = field(default_factory=dict)
    notes: str = ""


# name -> (program, compress template, decompress template, slow, version argv)
PEERS = {
    "xz": ("xz", ["-9e", "-T1", "-c", "{in}"], ["-d", "-T1", "-c", "{in}"], False, ["--version"]),
    "zstd-19": ("zstd", ["-19", "-q", "-c", "{in}"], ["-d", "-q", "-c", "{in}"], False, ["--version"]),
    "zstd-22": ("zstd", ["--ultra", "-22", "-q", "-c", "{in}"], ["-d", "-q", "-c", "{in}"], False,
                ["--version"]),
    "bzip2": ("bzip2", ["-9", "-c", "{in}"], ["-d", "-c", "{in}"], False, ["--version"]),
    "brotli": ("brotli", ["-q", "11", "-w", "24", "-c", "{in}"], ["-d", "-c", "{in}"], False,
               ["--version"]),
    "lpaq1": ("lpaq1", ["9", "{in}", "{out}"], ["d", "{in}", "{out}"], False, []),
    "paq8px": ("paq8px", ["-8", "{in}", "{out}"], ["-d", "{in}", "{out}"], True, []),
}
# How each is shown in tables (the flags a reader needs to reproduce it).
LABELS = {"xz": "xz -9e", "zstd-19": "zstd -19", "zstd-22": "zstd --ultra -22", "bzip2": "bzip2 -9",
          "brotli": "brotli -q 11 -w 24", "lpaq1": "lpaq1 9", "paq8px": "paq8px -8"}
REFERENCE = "xz"                   # sizes are also given relative to this peer


def peer_search_path(peers_path=None) -> str:
    extra = peers_path or os.environ.get("SSMZIP_PEERS_PATH", "")
    return os.pathsep.join(p for p in (extra, os.environ.get("PATH", "")) if p)


def _version(exe, argv) -> str:
    try:
        r = subprocess.run([exe] + argv, stdin=subprocess.DEVNULL, capture_output=True,
                           timeout=10, text=True, errors="replace")
    except (OSError, subprocess.SubprocessError):
        return ""
    for line in (r.stdout + "\n" + r.stderr).splitlines():
        if line.strip():
            return line.strip().strip("*").strip()
    return ""


def find_peers(names, peers_path=None):
    """-> (list of System found, list of names missing)."""
    path = peer_search_path(peers_path)
    found, missing = [], []
    for name in names:
        prog, comp, decomp, slow, vargs = PEERS[name]
        exe = shutil.which(prog, path=path)
        if not exe:
            missing.append(name)
            continue
        found.append(System(LABELS[name], [exe] + comp, [exe] + decomp, "peer", slow,
                            _version(exe, vargs), notes=exe))
    return found, missing


# ---------------------------------------------------------------- ssmzip

def ssmzip_root():
    """Directory holding the ssmzip package (the checkout, or site-packages)."""
    spec = importlib.util.find_spec("ssmzip")
    if spec is None or not spec.submodule_search_locations:
        return None
    return os.path.dirname(list(spec.submodule_search_locations)[0])


def ssmzip_mode() -> str:
    """'cli' when `python -m ssmzip` exists, 'api' when only the engine does, '' if neither."""
    root = ssmzip_root()
    if root is None:
        return ""
    pkg = os.path.join(root, "ssmzip")
    if os.path.exists(os.path.join(pkg, "__main__.py")) and os.path.exists(os.path.join(pkg, "cli.py")):
        return "cli"
    if os.path.isdir(os.path.join(pkg, "engine")):
        return "api"
    return ""


def cli_help() -> str:
    try:
        return subprocess.run([sys.executable, "-m", "ssmzip", "--help"], capture_output=True,
                              text=True, timeout=120, env=ssmzip_env()).stdout
    except (OSError, subprocess.SubprocessError):
        return ""


def ssmzip_env() -> dict:
    """Environment for the child: the checkout (and bench) importable from any cwd."""
    env = dict(os.environ)
    here = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    roots = [r for r in (ssmzip_root(), here) if r]
    env["PYTHONPATH"] = os.pathsep.join(roots + [env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    return env


BACKENDS = ("auto", "native", "numba")


def ssmzip_systems(levels, threads=(1,), block_size=None, mode=None, backends=("auto",)):
    """One System per (level, thread count, backend). Uses the CLI when it exists, else
    the engine's encode_block/decode_block through bench/api_runner.py (one block,
    no threads). A backend other than "auto" is forced with SSMZIP_BACKEND and
    named in the row: "ssmzip -6 (numba)"."""
    mode = mode or ssmzip_mode()
    if not mode:
        return []
    env = ssmzip_env()
    if mode == "api":
        threads = (1,)
    out = []
    for level, t, backend in ((lv, t, b) for lv in levels for t in threads for b in backends):
        name = f"ssmzip -{level}" + (f" -T{t}" if len(threads) > 1 or t != 1 else "")
        name += f" ({backend})" if backend != "auto" else ""
        env_b = dict(env, SSMZIP_BACKEND=backend) if backend != "auto" else env
        if mode == "cli":
            opts = [f"-{level}", "-T", str(t)]
            if block_size:
                opts += ["--block-size", str(block_size)]
            comp = [sys.executable, "-m", "ssmzip"] + opts + ["-c", "{in}"]
            decomp = [sys.executable, "-m", "ssmzip", "-d", "-T", str(t), "-c", "{in}"]
            notes = "python -m ssmzip (CLI)"
        else:
            name += " (api)"
            comp = [sys.executable, "-m", "bench.api_runner", "compress", str(level), "{in}"]
            decomp = [sys.executable, "-m", "bench.api_runner", "decompress", "0", "{in}"]
            notes = "engine API through bench/api_runner.py (no CLI yet): one block, no -T"
        out.append(System(name, comp, decomp, "ssmzip", env=env_b, notes=notes))
    return out


ABLATION_NAMES = {"cm": "CM alone", "ssm": "SSM alone", "full": "CM + SSM"}


def ablation_systems(level):
    """The SSM ablation at one level: context models alone, the SSM alone, both
    (bench/ablation_runner.py compresses; the ordinary CLI decompresses)."""
    if not ssmzip_mode():
        return []
    env = ssmzip_env()
    decomp = [sys.executable, "-m", "ssmzip", "-d", "-c", "{in}"]
    return [System(f"ssmzip -{level} {label}",
                   [sys.executable, "-m", "bench.ablation_runner", variant, str(level), "{in}"],
                   decomp, "ssmzip", env=env, notes=f"ablation ({label}) through bench/ablation_runner.py")
            for variant, label in ABLATION_NAMES.items()]


def expand(template, inp, outp):
    """Fill a template; return (argv, stdout_path or None)."""
    argv = [a.replace("{in}", inp).replace("{out}", outp) for a in template]
    return argv, (None if "{out}" in "".join(template) else outp)
