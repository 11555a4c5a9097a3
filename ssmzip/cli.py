"""The ``ssmzip`` command: xz's interface over the ssmzip format.

Behaviour follows xz: files are replaced by FILE.ssz (or back), stdin goes to
stdout, existing files are never overwritten without -f, output is written to
a temporary file in the target directory and renamed into place, and the input
is removed only once the output is complete and synced. Exit status 0 = ok,
1 = error, 2 = warning (a file skipped); every problem is one line
``ssmzip: FILE: reason`` on stderr, never a traceback.
"""
from __future__ import annotations

import os
import re
import stat
import sys
import tempfile
from dataclasses import dataclass
from typing import BinaryIO, Optional

import click

from . import __version__
from . import container
from .api import SSMZipFile, info
from .container import MAX_BLOCK_SIZE, MIN_BLOCK_SIZE
from .engine import DEFAULT_LEVEL
from .errors import SSMZipError

PROG = "ssmzip"
EXIT_OK, EXIT_ERROR, EXIT_WARNING, EXIT_INTERRUPTED = 0, 1, 2, 130
STDIN_NAME, STDOUT_NAME = "(stdin)", "(stdout)"
_CHUNK = 1 << 20


class _Skip(Exception):
    """A file is not processed: a warning (exit 2) or an error (exit 1)."""

    def __init__(self, name: str, reason: str, warning: bool = False):
        super().__init__(reason)
        self.name, self.reason, self.warning = name, reason, warning


class _BrokenStdout(Exception):
    """The reader of our stdout went away: stop quietly, like a tool killed by SIGPIPE."""


@dataclass
class _Options:
    mode: str
    to_stdout: bool
    keep: bool
    force: bool
    threads: int
    level: int
    verbose: int
    quiet: int
    suffix: str
    block_size: Optional[int]
    gpu: bool = False
    batch: Optional[int] = None

    def coding(self) -> dict:
        """Where blocks are coded: SSMZipFile's threads / backend / batch arguments."""
        if self.gpu:
            return {"backend": "torch", "batch": self.batch}
        return {"threads": self.threads}


class _Report:
    """Messages and the exit status they imply (errors beat warnings)."""

    def __init__(self, quiet: int):
        self.quiet = quiet
        self.status = EXIT_OK

    def error(self, name: str, reason: str) -> None:
        self.status = EXIT_ERROR
        if self.quiet < 2:
            click.echo(f"{PROG}: {name}: {reason}", err=True)

    def warning(self, name: str, reason: str) -> None:
        if self.status == EXIT_OK:
            self.status = EXIT_WARNING
        if self.quiet < 1:
            click.echo(f"{PROG}: {name}: {reason}", err=True)

    def note(self, text: str) -> None:
        click.echo(text, err=True)


# --------------------------------------------------------------------------
# Option types and helpers


class _SizeType(click.ParamType):
    """A byte count with an optional K/M/G (KiB/MiB/GiB) multiplier."""

    name = "SIZE"
    _RE = re.compile(r"^\s*(\d+)\s*(?:([kKmMgG])(?:i?B)?)?\s*$")

    def convert(self, value, param, ctx):
        if isinstance(value, int):
            n = value
        else:
            m = self._RE.match(str(value))
            if not m:
                self.fail(f"{value!r} is not a size (use e.g. 65536, 64K or 16M)", param, ctx)
            n = int(m.group(1)) << {None: 0, "k": 10, "m": 20, "g": 30}[
                m.group(2) and m.group(2).lower()]
        if not MIN_BLOCK_SIZE <= n <= MAX_BLOCK_SIZE:
            self.fail(f"{value} is out of range (1K .. 1G)", param, ctx)
        return n


def _human(n: int) -> str:
    if n < 1024:
        return f"{n} B"
    for unit in ("KiB", "MiB", "GiB", "TiB", "PiB"):
        n /= 1024
        if n < 1024 or unit == "PiB":
            return f"{n:,.1f} {unit}"
    raise AssertionError


def _ratio(compressed: int, original: int) -> str:
    return f"{compressed / original:.3f}" if original else "---"


def _binary_stdin() -> BinaryIO:
    return getattr(sys.stdin, "buffer", sys.stdin)


def _binary_stdout() -> BinaryIO:
    return getattr(sys.stdout, "buffer", sys.stdout)


def _isatty(stream) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError, OSError):
        return False


class _StdoutGuard:
    """Our stdout: turns a broken pipe into _BrokenStdout so the caller can stop quietly."""

    def __init__(self, fp: BinaryIO):
        self._fp = fp

    def write(self, data) -> int:
        try:
            return self._fp.write(data)
        except BrokenPipeError:
            raise _BrokenStdout() from None

    def flush(self) -> None:
        try:
            self._fp.flush()
        except BrokenPipeError:
            raise _BrokenStdout() from None


# --------------------------------------------------------------------------
# Progress


class _Bar:
    """A tqdm bar on stderr (when it is a terminal, or with -v), started once the total is known."""

    def __init__(self, opts: _Options, name: str):
        self._show = opts.quiet == 0 and (opts.verbose > 0 or _isatty(sys.stderr))
        self._leave = opts.verbose > 0
        self._name = name
        self._bar = None

    def start(self, total: Optional[int]) -> None:
        if self._show and self._bar is None:
            from tqdm import tqdm  # only when a bar is shown

            self._bar = tqdm(total=total, desc=self._name, unit="B", unit_scale=True,
                             unit_divisor=1024, file=sys.stderr, leave=self._leave,
                             dynamic_ncols=True)

    def update(self, n: int) -> None:
        if self._bar is None:
            self.start(None)
        if self._bar is not None:
            self._bar.update(n)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None


# --------------------------------------------------------------------------
# Output files


def _make_temp(target: str):
    """An open temporary file next to target (so the final rename stays on one file system)."""
    d, base = os.path.split(target)
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{base}.", suffix=".tmp", dir=d or ".")
    except OSError as e:
        raise _Skip(target, e.strerror or str(e)) from None
    return os.fdopen(fd, "wb"), tmp


def _install(tmp: str, target: str, force: bool) -> None:
    """Move the finished temp file to target; without force never replace an existing file."""
    if force:
        os.replace(tmp, target)
        return
    try:
        os.link(tmp, target)     # atomic "create only if absent"
    except FileExistsError:
        raise _Skip(target, "File exists") from None
    except OSError:
        # File systems without hard links: check, then rename (a small race).
        if os.path.lexists(target):
            raise _Skip(target, "File exists") from None
        os.replace(tmp, target)
        return
    os.unlink(tmp)


def _copy_metadata(st: os.stat_result, path: str) -> None:
    # Like xz: the new file gets the input's permission bits and times.
    try:
        os.chmod(path, stat.S_IMODE(st.st_mode) & 0o777)
        os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))
    except OSError:
        pass                     # not fatal: the data is what matters


# --------------------------------------------------------------------------
# One stream


class _CountingWriter:
    """Counts the bytes written through it (for the -v summary)."""

    def __init__(self, fp):
        self._fp, self.count = fp, 0

    def write(self, data) -> int:
        self._fp.write(data)
        self.count += len(data)
        return len(data)

    def flush(self) -> None:
        self._fp.flush()


def _copy(src, dst) -> int:
    """Copy src to dst (or just read it when dst is None); return the byte count."""
    n = 0
    while True:
        chunk = src.read(_CHUNK)
        if not chunk:
            return n
        if dst is not None:
            dst.write(chunk)
        n += len(chunk)


def _process_stream(opts: _Options, src: BinaryIO, dst, name: str,
                    size: Optional[int]) -> tuple:
    """Compress, decompress or test (dst None) src into dst.

    ``size`` is the input's size when it is a regular file. Returns
    (uncompressed bytes, compressed bytes or None when not known).
    """
    bar = _Bar(opts, name)
    try:
        if size is not None and _is_tensor_stream(opts, src):
            return _process_tensors(opts, src, dst, bar, size)
        if opts.mode == "compress":
            bar.start(size)
            out = _CountingWriter(dst)
            with SSMZipFile(out, "wb", level=opts.level, block_size=opts.block_size,
                            progress=bar.update, **opts.coding()) as z:
                n = _copy(src, z)
            return n, out.count
        with SSMZipFile(src, "rb", progress=bar.update, **opts.coding()) as z:
            bar.start(z.total_size)   # known before decoding when src is seekable
            return _copy(z, dst), size
    finally:
        bar.close()


# --------------------------------------------------------------------------
# .safetensors files: the tensor codec instead of the byte-stream engine


class _NullWriter:
    """Where -t sends decoded data."""

    def write(self, data) -> int:
        return len(data)


def _is_tensor_stream(opts: _Options, src) -> bool:
    """A seekable input that the tensor codec handles: a .safetensors file to compress
    (recognised by its header, not its name), or a tensor archive to decompress."""
    pos = src.tell()
    head = src.read(16)
    src.seek(pos)
    # A look at the first bytes rules most files out without loading the tensor
    # codec (it imports numba: a third of a second): a safetensors file has '{'
    # after its 8-byte header length, a .ssz file is no tensor archive.
    if opts.mode == "compress" and head[8:9] != b"{":
        return False
    if opts.mode != "compress" and head.startswith(container.MAGIC):
        return False
    from .kv import safetensors as kvst

    if opts.mode == "compress":
        return kvst.is_safetensors(src)
    return kvst.is_compressed_safetensors(src)


def _process_tensors(opts: _Options, src, dst, bar, size: int) -> tuple:
    from .kv import safetensors as kvst
    from .parallel import resolve_threads

    threads = resolve_threads(opts.threads)
    if opts.mode == "compress":
        bar.start(size)
        out = _CountingWriter(dst)
        stats = kvst.compress_safetensors(src, out, progress=bar.update, threads=threads)
        return stats["input"], out.count
    bar.start(kvst.original_size(src))
    n = kvst.decompress_safetensors(src, dst if dst is not None else _NullWriter(),
                                    progress=bar.update, threads=threads)
    return n, size


# --------------------------------------------------------------------------
# One command-line argument


def _output_name(opts: _Options, path: str) -> str:
    """FILE.ssz for compression; FILE.ssz -> FILE for decompression (or skip)."""
    if opts.mode == "compress":
        if path.endswith(opts.suffix):
            raise _Skip(path, f"already has '{opts.suffix}' suffix, skipping", warning=True)
        return path + opts.suffix
    base = os.path.basename(path)
    if not base.endswith(opts.suffix) or base == opts.suffix:
        raise _Skip(path, "Filename has an unknown suffix, skipping", warning=True)
    return path[:-len(opts.suffix)]


def _check_input(opts: _Options, path: str, writes_file: bool) -> None:
    """xz's rules for which inputs are processed (lstat: symlinks are not followed)."""
    st = os.lstat(path)
    if stat.S_ISDIR(st.st_mode):
        raise _Skip(path, "Is a directory, skipping", warning=True)
    if stat.S_ISLNK(st.st_mode):
        if writes_file and not opts.force:
            raise _Skip(path, "Is a symbolic link, skipping", warning=True)
        st = os.stat(path)
        if stat.S_ISDIR(st.st_mode):
            raise _Skip(path, "Is a directory, skipping", warning=True)
    if not stat.S_ISREG(st.st_mode) and (writes_file or opts.mode == "list"):
        raise _Skip(path, "Not a regular file, skipping", warning=True)
    if writes_file and not opts.keep and st.st_nlink > 1 and not opts.force:
        # removing one name of several would not free the data
        raise _Skip(path, "Input file has more than one hard link, skipping", warning=True)


def _process_file(opts: _Options, report: _Report, path: str, stdout) -> None:
    writes_file = opts.mode in ("compress", "decompress") and not opts.to_stdout
    _check_input(opts, path, writes_file)
    target = _output_name(opts, path) if writes_file else None
    if target is not None and not opts.force and os.path.lexists(target):
        raise _Skip(target, "File exists")
    with open(path, "rb") as src:
        st = os.fstat(src.fileno())
        size = st.st_size if stat.S_ISREG(st.st_mode) else None
        if target is None:
            dst = stdout if opts.mode != "test" else None
            n_plain, n_packed = _process_stream(opts, src, dst, path, size)
        else:
            out, tmp = _make_temp(target)
            try:
                with out:
                    n_plain, n_packed = _process_stream(opts, src, out, path, size)
                    out.flush()
                    if not opts.keep:
                        os.fsync(out.fileno())   # the output is on disk before the input goes
                _copy_metadata(st, tmp)
                _install(tmp, target, opts.force)
            except BaseException:
                try:
                    os.unlink(tmp)
                except OSError:
                    pass
                raise
    if target is not None and not opts.keep:
        try:
            os.unlink(path)
        except OSError as e:
            report.warning(path, f"Cannot remove: {e.strerror}")
    if opts.verbose:
        _summary(opts, report, path, n_plain, n_packed)


def _process_stdin(opts: _Options, report: _Report, stdout) -> None:
    src = _binary_stdin()
    if src is None:                       # started with stdin closed
        raise _Skip(STDIN_NAME, "Bad file descriptor")
    dst = None if opts.mode == "test" else stdout
    n_plain, n_packed = _process_stream(opts, src, dst, STDIN_NAME, None)
    if opts.verbose:
        _summary(opts, report, STDIN_NAME, n_plain, n_packed)


def _summary(opts: _Options, report: _Report, name: str, n_plain: int,
             n_packed: Optional[int]) -> None:
    if n_packed is None:
        report.note(f"{name}: {_human(n_plain)} ok")
    else:
        report.note(f"{name}: {_human(n_packed)} / {_human(n_plain)} = "
                    f"{_ratio(n_packed, n_plain)}")


# --------------------------------------------------------------------------
# -l


def _list_tensors(path: str) -> bool:
    """-l of a compressed .safetensors file: one row per tensor. False if it is not one."""
    from .kv import safetensors as kvst
    from .kv.__main__ import format_rows

    if not kvst.is_compressed_safetensors(path):
        return False
    click.echo(f"{click.format_filename(path)}: compressed .safetensors")
    click.echo("\n".join(format_rows(kvst.list_safetensors(path))))
    return True


_LIST_HEAD = f"{'Blocks':>7} {'Compressed':>12} {'Uncompressed':>12} {'Ratio':>6} {'Level':>5}  Filename"


def _list(opts: _Options, report: _Report, paths) -> None:
    rows = []
    for path in paths:
        try:
            if path == "-":
                raise _Skip(STDIN_NAME, "--list does not support reading from standard input")
            _check_input(opts, path, writes_file=False)
            if _list_tensors(path):
                continue
            rows.append((path, info(path)))
        except _Skip as e:
            (report.warning if e.warning else report.error)(e.name, e.reason)
            continue
        except SSMZipError as e:
            report.error(path, str(e))
            continue
        except OSError as e:
            report.error(path, e.strerror or str(e))
            continue
        if len(rows) == 1:
            click.echo(_LIST_HEAD)
        i = rows[-1][1]
        click.echo(f"{len(i.blocks):>7} {_human(i.compressed_size):>12} "
                   f"{_human(i.uncompressed_size):>12} "
                   f"{_ratio(i.compressed_size, i.uncompressed_size):>6} {'-' + str(i.level):>5}  "
                   f"{click.format_filename(path)}")
        if opts.verbose:
            click.echo(f"{'':>7} block size {_human(i.block_size)}")
            for n, b in enumerate(i.blocks):
                click.echo(f"{'':>7} block {n}: {b.payload_size} / {b.size} bytes, "
                           f"{'stored' if b.stored else 'coded'}, crc32 {b.crc:08x}")
    if len(rows) > 1:
        c = sum(i.compressed_size for _, i in rows)
        u = sum(i.uncompressed_size for _, i in rows)
        b = sum(len(i.blocks) for _, i in rows)
        click.echo("-" * len(_LIST_HEAD))
        click.echo(f"{b:>7} {_human(c):>12} {_human(u):>12} {_ratio(c, u):>6} {'':>5}  "
                   f"{len(rows)} files")


# --------------------------------------------------------------------------
# The command


def _run(opts: _Options, files) -> int:
    report = _Report(opts.quiet)
    files = list(files) or ["-"]
    if opts.mode == "list":
        _list(opts, report, files)
        return report.status

    to_stdout = opts.to_stdout or "-" in files
    stdout = _StdoutGuard(_binary_stdout())
    if opts.mode == "compress" and to_stdout and not opts.force and _isatty(sys.stdout):
        report.error(STDOUT_NAME, "Compressed data cannot be written to a terminal")
        return report.status
    if opts.mode != "compress" and "-" in files and _isatty(sys.stdin):
        report.error(STDIN_NAME, "Compressed data cannot be read from a terminal")
        return report.status

    try:
        for path in files:
            name = STDIN_NAME if path == "-" else path
            try:
                if path == "-":
                    _process_stdin(opts, report, stdout)
                else:
                    _process_file(opts, report, path, stdout)
            except _Skip as e:
                (report.warning if e.warning else report.error)(e.name, e.reason)
            except SSMZipError as e:
                report.error(name, str(e))
            except OSError as e:
                report.error(name, e.strerror or str(e))
            except MemoryError:
                report.error(name, "out of memory")
            except RuntimeError as e:     # e.g. a worker process was killed
                report.error(name, str(e))
        stdout.flush()
    except _BrokenStdout:
        _silence_stdout()
        return EXIT_ERROR
    return report.status


def _silence_stdout() -> None:
    """After a broken pipe: stop quietly, as a tool killed by SIGPIPE would, and keep
    Python's flush of stdout at exit from complaining about the dead pipe."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError, AttributeError):
        pass


class _XzCommand(click.Command):
    """xz-style exits: usage errors are exit 1 with one line, Ctrl-C is 130, no tracebacks."""

    def main(self, args=None, prog_name=None, complete_var=None, standalone_mode=True, **extra):
        try:
            code = super().main(args, prog_name=PROG, complete_var=complete_var,
                                standalone_mode=False, **extra)
        except click.UsageError as e:
            click.echo(f"{PROG}: {e.format_message()}", err=True)
            click.echo(f"{PROG}: Try '{PROG} --help' for more information.", err=True)
            code = EXIT_ERROR
        except click.ClickException as e:
            click.echo(f"{PROG}: {e.format_message()}", err=True)
            code = EXIT_ERROR
        except (click.Abort, KeyboardInterrupt):
            code = EXIT_INTERRUPTED
        except BrokenPipeError:           # -l, --help or messages into a closed pipe
            _silence_stdout()
            code = EXIT_ERROR
        except Exception as e:  # a bug; still one line, never a traceback
            click.echo(f"{PROG}: internal error: {type(e).__name__}: {e}", err=True)
            code = EXIT_ERROR
        code = code if isinstance(code, int) else EXIT_OK
        if standalone_mode:
            sys.exit(code)
        return code


def _print_version(ctx) -> None:
    from .engine import native
    click.echo(f"{PROG} {__version__}")
    click.echo(f"backend: {native.describe()}")
    import importlib.util                      # not importing torch: it takes a second
    has_torch = importlib.util.find_spec("torch") is not None
    click.echo("gpu mode (--gpu): " + ("torch is installed" if has_torch
                                       else "needs torch (pip install 'ssmzip[gpu]')"))
    ctx.exit(EXIT_OK)


def _level_options(f):
    # -1 .. -9 all set "level"; the last one given wins, as in xz.
    for n in range(9, 0, -1):
        extra = {"default": True} if n == DEFAULT_LEVEL else {}
        f = click.option(f"-{n}", "level", flag_value=n, hidden=n not in (1, 9),
                         help={1: "fastest", 9: "best compression"}.get(n), **extra)(f)
    return f


@click.command(cls=_XzCommand, context_settings={"help_option_names": ["-h", "--help"]},
               epilog=f"Levels -1 .. -9 (default -{DEFAULT_LEVEL}). With no FILE, or when "
                      "FILE is -, read standard input and write standard output. "
                      "A .safetensors file (recognised by its header) is compressed "
                      "losslessly with the tensor codec instead; -d gives back the identical "
                      "file and -l lists its tensors. "
                      "Exit status: 0 ok, 1 error, 2 warning.")
@click.option("-z", "--compress", "mode", flag_value="compress", default=True,
              help="Compress (the default).")
@click.option("-d", "--decompress", "mode", flag_value="decompress", help="Decompress.")
@click.option("-t", "--test", "mode", flag_value="test",
              help="Decode and verify; write nothing.")
@click.option("-l", "--list", "mode", flag_value="list",
              help="List sizes, ratio and blocks without decoding.")
@click.option("-c", "--stdout", "to_stdout", is_flag=True,
              help="Write to standard output; keep input files.")
@click.option("-k", "--keep", is_flag=True, help="Keep (do not delete) input files.")
@click.option("-f", "--force", is_flag=True,
              help="Overwrite output files; write compressed data to a terminal.")
@click.option("-T", "--threads", type=click.IntRange(min=0), default=1, metavar="N",
              help="Threads (0 = all cores): blocks in parallel; at -9 a block takes two "
                   "(its SSM learns beside the coding). Output is the same for any N.")
@_level_options
@click.option("-v", "--verbose", count=True, help="Progress bar and summary; -lv lists blocks.")
@click.option("-q", "--quiet", count=True, help="No warnings; -qq: no errors either.")
@click.option("-S", "--suffix", default=".ssz", show_default=True, metavar="SUF",
              help="Suffix of compressed files.")
@click.option("--block-size", type=_SizeType(), default=None,
              help="Block size, e.g. 1M (default: the level's). Blocks are coded independently.")
@click.option("--gpu", is_flag=True,
              help="GPU mode (levels 7-9): the SSMs of several blocks trained and run together "
                   "on torch (pip install 'ssmzip[gpu]'), on CUDA when there is a device, else "
                   "on the CPU with a notice (slower). No torch: error. Same output bytes.")
@click.option("--batch", type=click.IntRange(min=1), default=None, metavar="N",
              help="Blocks coded together in GPU mode (default 16); each holds its own model "
                   "in memory.")
@click.option("-V", "--version", is_flag=True, expose_value=False, is_eager=True,
              callback=lambda ctx, _, value: _print_version(ctx) if value else None,
              help="Show the version and the coding backend, and exit.")
@click.argument("files", nargs=-1, type=click.Path(allow_dash=True), metavar="[FILE]...")
def command(mode, to_stdout, keep, force, threads, level, verbose, quiet, suffix, block_size,
            gpu, batch, files):
    """Compress or decompress FILEs in the .ssz format (xz's interface)."""
    if not suffix or "/" in suffix or suffix == ".":
        raise click.BadParameter(f"invalid suffix {suffix!r}", param_hint="'-S'")
    if batch is not None and not gpu:
        raise click.BadParameter("--batch is for --gpu", param_hint="'--batch'")
    opts = _Options(mode, to_stdout, keep or to_stdout, force, threads, level, verbose, quiet,
                    suffix, block_size, gpu, batch)
    if gpu and mode != "list" and not _gpu_ready(opts):
        return EXIT_ERROR
    return _run(opts, files)


def _gpu_ready(opts: _Options) -> bool:
    """--gpu: torch must be there (else one line, exit 1); without CUDA, a notice."""
    from .batching import BackendError, batch_pool
    try:
        pool = batch_pool(1)
    except BackendError as e:
        if opts.quiet < 2:
            click.echo(f"{PROG}: {e}", err=True)
        return False
    if pool.device.type != "cuda" and opts.quiet < 1:
        click.echo(f"{PROG}: no CUDA device: --gpu runs torch on the CPU (the same bytes, slower)",
                   err=True)
    return True


def main(args=None) -> int:
    """Console-script entry point."""
    return command.main(args=args, prog_name=PROG)
