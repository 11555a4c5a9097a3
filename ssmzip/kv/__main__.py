"""``python -m ssmzip.kv``: compress .safetensors files with the lossless tensor codec.

    python -m ssmzip.kv model.safetensors          -> model.safetensors.ssz
    python -m ssmzip.kv -d model.safetensors.ssz   -> model.safetensors (byte-identical)
    python -m ssmzip.kv -l model.safetensors.ssz   -> tensors with their ratios

Exit status: 0 on success, 1 on an error (one line on stderr), 2 on bad usage.
"""
import argparse
import os
import sys

from ssmzip.errors import SSMZipError
from ssmzip.kv import safetensors as st


def _bar(total, desc, enabled):
    if not enabled:
        return None
    try:
        from tqdm import tqdm
    except ImportError:
        return None
    return tqdm(total=total, desc=desc, unit="B", unit_scale=True, unit_divisor=1024, leave=False, file=sys.stderr)


def _out_name(src, decompress):
    if decompress:
        if src.endswith(st.SUFFIX):
            return src[:-len(st.SUFFIX)]
        raise SSMZipError(f"{src}: unknown suffix, use -o to name the output")
    return src + st.SUFFIX


def format_rows(rows):
    """The -l table as a list of lines."""
    lines = [f"{'ratio':>7} {'compressed':>12} {'original':>12}  {'dtype':<8} {'shape':<20} name"]
    tin = tout = 0
    for r in rows:
        shape = "x".join(str(d) for d in r["shape"]) if r["kind"] == "tensor" else ""
        lines.append(f"{100 * r['ratio']:6.2f}% {r['compressed']:>12,} {r['nbytes']:>12,}  {r['dtype']:<8} {shape:<20} {r['name']}")
        tin += r["nbytes"]
        tout += r["compressed"]
    lines.append(f"{100 * tout / tin if tin else 100:6.2f}% {tout:>12,} {tin:>12,}  total ({sum(r['kind'] == 'tensor' for r in rows)} tensors)")
    return lines


def main(argv=None):
    p = argparse.ArgumentParser(prog="python -m ssmzip.kv", description="Lossless tensor-aware compression of .safetensors files.")
    g = p.add_mutually_exclusive_group()
    g.add_argument("-d", "--decompress", action="store_true", help="decompress")
    g.add_argument("-l", "--list", action="store_true", help="list the tensors of compressed files with their ratios")
    p.add_argument("-o", "--output", help="output file (one input only)")
    p.add_argument("-f", "--force", action="store_true", help="overwrite existing output files")
    p.add_argument("-k", "--keep", action="store_true", help="keep input files (default: keep; accepted for symmetry)")
    p.add_argument("-T", "--threads", type=int, default=1, help="threads (default 1)")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    p.add_argument("files", nargs="+")
    a = p.parse_args(argv)
    if a.output and len(a.files) != 1:
        p.error("-o needs exactly one input file")
    if a.threads < 1:
        p.error("-T must be at least 1")
    status = 0
    for src in a.files:
        try:
            if a.list:
                for line in format_rows(st.list_safetensors(src)):
                    print(line)
                continue
            dst = a.output or _out_name(src, a.decompress)
            if os.path.exists(dst) and not a.force:
                raise SSMZipError(f"{dst} already exists (use -f to overwrite)")
            size = os.path.getsize(src)
            show = not a.quiet and sys.stderr.isatty()
            if a.decompress:
                if not st.is_compressed_safetensors(src):
                    raise SSMZipError(f"{src}: not a compressed safetensors file")
                bar = _bar(st.original_size(src) if show else None, os.path.basename(src), show)
                try:
                    st.decompress_safetensors(src, dst, progress=bar.update if bar else None, threads=a.threads)
                finally:
                    if bar:
                        bar.close()
            else:
                if not st.is_safetensors(src):
                    raise SSMZipError(f"{src}: not a safetensors file")
                bar = _bar(size, os.path.basename(src), show)
                try:
                    stats = st.compress_safetensors(src, dst, progress=bar.update if bar else None, threads=a.threads)
                finally:
                    if bar:
                        bar.close()
                if not a.quiet:
                    pct = 100 * stats["output"] / stats["input"] if stats["input"] else 100.0
                    print(f"{src}: {stats['input']:,} -> {stats['output']:,} bytes ({pct:.2f}%), {stats['tensors']} tensors",
                          file=sys.stderr)
        except SSMZipError as e:
            print(f"ssmzip.kv: {e}", file=sys.stderr)
            status = 1
        except OSError as e:
            print(f"ssmzip.kv: {src}: {e.strerror or e}", file=sys.stderr)
            status = 1
    return status


if __name__ == "__main__":
    sys.exit(main())
