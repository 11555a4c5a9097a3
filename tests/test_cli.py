"""The ssmzip command: xz's behaviour, run in-process (CliRunner) and as a real process."""
import os
import signal
import stat
import subprocess
import sys
import time
import zlib
from pathlib import Path

import pytest
from click.testing import CliRunner

import ssmzip
from ssmzip.cli import command

from conftest import BS, FAST, text_sample


def run(*args, input=None):
    """Invoke the command in-process; returns the click Result (stdout/stderr split)."""
    return CliRunner().invoke(command, [str(a) for a in args], input=input)


def one_line_errors(result):
    lines = result.stderr.splitlines()
    assert lines, "expected a message on stderr"
    assert all(line.startswith("ssmzip: ") for line in lines), result.stderr
    assert "Traceback" not in result.stderr
    return lines


@pytest.fixture
def sample(tmp_path):
    p = tmp_path / "sample.txt"
    p.write_bytes(text_sample(2500))
    return p


# ---------------------------------------------------------------- files


def test_compress_then_decompress_replaces_files(sample):
    data = sample.read_bytes()
    os.chmod(sample, 0o640)
    r = run(f"-{FAST}", "--block-size", "1K", sample)
    assert r.exit_code == 0, r.stderr
    packed = sample.with_name("sample.txt.ssz")
    assert not sample.exists() and packed.exists()
    assert stat.S_IMODE(packed.stat().st_mode) == 0o640
    assert len(ssmzip.info(packed).blocks) == 3
    r = run("-d", packed)
    assert r.exit_code == 0, r.stderr
    assert sample.read_bytes() == data and not packed.exists()
    assert [p.name for p in sample.parent.iterdir()] == ["sample.txt"]   # no temp files left


def test_keep(sample):
    assert run("-k", f"-{FAST}", sample).exit_code == 0
    assert sample.exists() and sample.with_name("sample.txt.ssz").exists()


def test_refuses_to_clobber_and_force_overwrites(sample):
    out = sample.with_name("sample.txt.ssz")
    out.write_bytes(b"precious")
    r = run(f"-{FAST}", sample)
    assert r.exit_code == 1
    assert one_line_errors(r) == [f"ssmzip: {out}: File exists"]
    assert out.read_bytes() == b"precious" and sample.exists()
    r = run(f"-{FAST}", "-f", sample)
    assert r.exit_code == 0 and not sample.exists()
    assert ssmzip.decompress(out.read_bytes()) == text_sample(2500)
    # decompressing onto an existing file
    sample.write_bytes(b"other")
    r = run("-d", out)
    assert r.exit_code == 1 and one_line_errors(r) == [f"ssmzip: {sample}: File exists"]
    assert run("-df", out).exit_code == 0 and sample.read_bytes() == text_sample(2500)


def test_stdout_keeps_input(sample):
    r = run("-c", f"-{FAST}", sample)
    assert r.exit_code == 0 and sample.exists()
    assert ssmzip.decompress(r.stdout_bytes) == sample.read_bytes()
    packed = sample.with_name("sample.txt.ssz")
    packed.write_bytes(r.stdout_bytes)
    r = run("-dc", packed)
    assert r.exit_code == 0 and r.stdout_bytes == sample.read_bytes() and packed.exists()


def test_custom_suffix(sample):
    assert run("-S", ".zz", f"-{FAST}", sample).exit_code == 0
    packed = sample.with_name("sample.txt.zz")
    assert packed.exists()
    assert run("-d", packed).exit_code == 2                      # wrong suffix: skipped
    assert run("-d", "-S", ".zz", packed).exit_code == 0 and sample.exists()
    r = run("-S", "", sample)
    assert r.exit_code == 1 and "invalid suffix" in r.stderr


# ---------------------------------------------------------------- stdin / stdout


def test_stdin_to_stdout():
    data = text_sample(3000)
    r = run(f"-{FAST}", "--block-size", "1024", input=data)
    assert r.exit_code == 0, r.stderr
    assert r.stdout_bytes == ssmzip.compress(data, level=FAST, block_size=BS)
    r2 = run("-d", input=r.stdout_bytes)
    assert r2.exit_code == 0 and r2.stdout_bytes == data
    r3 = run("-d", "-", input=r.stdout_bytes)
    assert r3.exit_code == 0 and r3.stdout_bytes == data
    r4 = run("-t", input=r.stdout_bytes)
    assert r4.exit_code == 0 and r4.stdout_bytes == b""


def test_stdin_garbage():
    r = run("-d", input=b"hello, not compressed")
    assert r.exit_code == 1
    assert one_line_errors(r) == ["ssmzip: (stdin): not an ssmzip file (bad magic)"]


# ---------------------------------------------------------------- -t and -l


def test_test_mode(sample):
    packed = sample.with_name("s.ssz")
    packed.write_bytes(ssmzip.compress(sample.read_bytes(), level=FAST, block_size=BS))
    r = run("-t", packed)
    assert r.exit_code == 0 and r.stdout_bytes == b"" and r.stderr == ""
    assert sorted(p.name for p in sample.parent.iterdir()) == ["s.ssz", "sample.txt"]
    bad = bytearray(packed.read_bytes())
    bad[len(bad) // 2] ^= 1
    packed.write_bytes(bytes(bad))
    r = run("-t", packed)
    assert r.exit_code == 1 and len(one_line_errors(r)) == 1
    assert packed.exists()


def test_list(sample, tmp_path):
    a = tmp_path / "a.ssz"
    a.write_bytes(ssmzip.compress(sample.read_bytes(), level=FAST, block_size=BS))
    b = tmp_path / "b.ssz"
    b.write_bytes(ssmzip.compress(b"", level=9))
    r = run("-l", a)
    assert r.exit_code == 0
    head, row = r.stdout.splitlines()
    assert head.split() == ["Blocks", "Compressed", "Uncompressed", "Ratio", "Level", "Filename"]
    assert row.split()[0] == "3" and row.split()[-2:] == ["-1", str(a)]
    r = run("-l", a, b)
    lines = r.stdout.splitlines()
    assert r.exit_code == 0 and len(lines) == 5 and lines[-1].endswith("2 files")
    assert "---" in lines[2]                                    # ratio of an empty stream
    r = run("-lv", a)
    assert "block 2: " in r.stdout and "coded" in r.stdout
    r = run("-l", input=a.read_bytes())
    assert r.exit_code == 1
    assert one_line_errors(r) == [
        "ssmzip: (stdin): --list does not support reading from standard input"]


def test_list_does_not_decode(sample, tmp_path, monkeypatch):
    a = tmp_path / "a.ssz"
    a.write_bytes(ssmzip.compress(sample.read_bytes(), level=FAST, block_size=BS))

    def boom(*args, **kw):
        raise AssertionError("decoded")

    monkeypatch.setattr("ssmzip.container.decode_block", boom)
    assert run("-l", a).exit_code == 0


# ---------------------------------------------------------------- exit codes and messages


def test_missing_file_and_continue(sample, tmp_path):
    r = run(f"-{FAST}", "-k", tmp_path / "nope", sample)
    assert r.exit_code == 1
    assert one_line_errors(r) == [f"ssmzip: {tmp_path / 'nope'}: No such file or directory"]
    assert sample.with_name("sample.txt.ssz").exists()           # the next file was done


def test_warnings_exit_2(sample, tmp_path):
    r = run(tmp_path)
    assert r.exit_code == 2 and one_line_errors(r) == [
        f"ssmzip: {tmp_path}: Is a directory, skipping"]
    r = run("-d", sample)
    assert r.exit_code == 2 and "unknown suffix" in r.stderr
    done = tmp_path / "x.ssz"
    done.write_bytes(b"")
    r = run(done)
    assert r.exit_code == 2 and "already has '.ssz' suffix" in r.stderr
    assert run("-q", done).stderr == ""
    r = run("-d", sample, tmp_path / "nope")                    # warning + error: error wins
    assert r.exit_code == 1 and len(one_line_errors(r)) == 2


def test_symlink_skipped_without_force(sample, tmp_path):
    link = tmp_path / "link"
    link.symlink_to(sample)
    r = run(f"-{FAST}", link)
    assert r.exit_code == 2 and "symbolic link" in r.stderr
    assert run(f"-{FAST}", "-c", link).exit_code == 0


def test_corrupt_file_leaves_no_output(sample, tmp_path):
    packed = tmp_path / "c.ssz"
    packed.write_bytes(ssmzip.compress(sample.read_bytes(), level=FAST, block_size=BS)[:-5])
    r = run("-d", packed)
    assert r.exit_code == 1 and one_line_errors(r)[0].startswith(f"ssmzip: {packed}: truncated")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.ssz", "sample.txt"]


def test_usage_errors_exit_1():
    for args in (["--no-such-option"], ["-T", "x"], ["-T", "-1"], ["--block-size", "1Q"],
                 ["--block-size", "10"], ["--block-size", "2G"]):
        r = run(*args, input=b"")
        assert r.exit_code == 1, args
        assert "Traceback" not in r.stderr and r.stderr.startswith("ssmzip: ")


def test_help_and_version():
    r = run("--help")
    assert r.exit_code == 0 and "--decompress" in r.stdout and "--block-size" in r.stdout
    r = run("--version")
    assert r.exit_code == 0 and r.stdout.splitlines()[0] == f"ssmzip {ssmzip.__version__}"
    assert r.stdout.splitlines()[1].startswith("backend: ")


def test_levels_and_combined_flags(sample):
    r = run("-9c", sample)
    assert r.exit_code == 0
    assert ssmzip.info(__import__("io").BytesIO(r.stdout_bytes)).level == 9
    r = run("-3", f"-{FAST}", "-c", sample)                      # the last level wins
    assert ssmzip.info(__import__("io").BytesIO(r.stdout_bytes)).level == FAST


def test_block_size_suffixes(sample):
    for arg, bs in (("1K", 1024), ("2KiB", 2048), ("1m", 1 << 20), ("4096", 4096)):
        r = run(f"-{FAST}", "-c", "--block-size", arg, sample)
        assert ssmzip.info(__import__("io").BytesIO(r.stdout_bytes)).block_size == bs


def test_threads_identical_bytes(tmp_path):
    p = tmp_path / "f"
    p.write_bytes(text_sample(5 * BS + 10, seed=9))
    one = run(f"-{FAST}", "-c", "-T", "1", "--block-size", "1K", p)
    two = run(f"-{FAST}", "-c", "-T", "2", "--block-size", "1K", p)
    assert one.exit_code == two.exit_code == 0
    assert one.stdout_bytes == two.stdout_bytes
    back = run("-d", "-T", "0", input=two.stdout_bytes)
    assert back.stdout_bytes == p.read_bytes()


def test_verbose_shows_progress_and_summary(sample):
    r = run("-v", "-k", f"-{FAST}", sample)
    assert r.exit_code == 0
    assert "100%" in r.stderr and "sample.txt: " in r.stderr


# ---------------------------------------------------------------- as a real process


# The processes run the package this one imported: in CI the installed one, with
# its C library, not the checkout (`python -m` looks in its working directory
# first, so that is where they start).
PACKAGE_HOME = Path(ssmzip.__file__).resolve().parent.parent


def _env(**extra):
    env = dict(os.environ, **extra)
    env["PYTHONPATH"] = os.pathsep.join([str(PACKAGE_HOME), env.get("PYTHONPATH", "")])
    return env


def _default_sigint():
    # A shell that starts the tests in the background hands SIGINT on ignored,
    # and the command then rightly keeps ignoring it (as xz does).
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def ssmzip_proc(*args, **kw):
    kw.setdefault("stdout", subprocess.PIPE)
    kw.setdefault("stderr", subprocess.PIPE)
    return subprocess.run([sys.executable, "-m", "ssmzip", *map(str, args)],
                          env=_env(), cwd=PACKAGE_HOME, timeout=300, **kw)


def test_subprocess_pipe_round_trip():
    data = text_sample(4000)
    c = ssmzip_proc(f"-{FAST}", "--block-size", "1K", input=data)
    assert c.returncode == 0, c.stderr
    d = ssmzip_proc("-d", input=c.stdout)
    assert d.returncode == 0 and d.stdout == data and d.stderr == b""
    bad = ssmzip_proc("-d", input=c.stdout[:100])
    assert bad.returncode == 1 and bad.stderr == b"ssmzip: (stdin): truncated file\n"


@pytest.mark.skipif(not hasattr(os, "openpty"), reason="needs a pseudo-terminal")
def test_refuses_terminal():
    master, slave = os.openpty()
    try:
        r = ssmzip_proc(stdin=subprocess.DEVNULL, stdout=slave, stderr=subprocess.PIPE)
        assert r.returncode == 1
        assert r.stderr == b"ssmzip: (stdout): Compressed data cannot be written to a terminal\n"
        r = ssmzip_proc("-d", stdin=slave, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        assert r.returncode == 1
        assert r.stderr == b"ssmzip: (stdin): Compressed data cannot be read from a terminal\n"
    finally:
        os.close(master)
        os.close(slave)


def _stored_stream(data: bytes, block_size: int) -> bytes:
    """A valid stream of stored blocks, made without the (slow) engine."""
    from ssmzip import container as C

    recs = [C.BlockRecord(C.KIND_STORED, len(b), len(b), zlib.crc32(b), zlib.crc32(b))
            for b in (data[i:i + block_size] for i in range(0, len(data), block_size))]
    body = b"".join(r.pack_header() + data[i * block_size:(i + 1) * block_size]
                    for i, r in enumerate(recs))
    return (C.pack_header(ssmzip.engine.preset_for_level(FAST), block_size) + body
            + C.pack_trailer(recs, len(data)))


def test_broken_pipe_is_quiet(tmp_path):
    # more than any pipe buffer, so that the writer sees the reader go away
    p = tmp_path / "z.ssz"
    p.write_bytes(_stored_stream(b"z" * (16 << 20), 1 << 20))
    proc = subprocess.Popen([sys.executable, "-m", "ssmzip", "-dc", str(p)], env=_env(), cwd=PACKAGE_HOME,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert proc.stdout.read(10) == b"z" * 10
    proc.stdout.close()
    err = proc.stderr.read()
    assert proc.wait(timeout=120) == 1
    assert b"Traceback" not in err and b"Exception" not in err


@pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals")
def test_interrupt_cleans_up(tmp_path):
    p = tmp_path / "big"
    p.write_bytes(text_sample(3 << 20, seed=4))
    proc = subprocess.Popen([sys.executable, "-m", "ssmzip", "-6", str(p)], env=_env(), cwd=PACKAGE_HOME,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, preexec_fn=_default_sigint)
    deadline = time.time() + 60
    while not any(q.name.endswith(".tmp") for q in tmp_path.iterdir()):
        assert proc.poll() is None and time.time() < deadline
        time.sleep(0.05)
    time.sleep(0.5)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130
    assert b"Traceback" not in err
    assert sorted(q.name for q in tmp_path.iterdir()) == ["big"]


def test_demo_round_trips():
    """The README's first command ends in `ssmzip-demo` (the installed script, or the
    module where the package is not installed)."""
    script = Path(sys.executable).with_name("ssmzip-demo")
    cmd = [str(script)] if script.exists() else [sys.executable, "-m", "ssmzip.demo"]
    r = subprocess.run(cmd + ["--size", "20000", "--level", "1"],
                       capture_output=True, text=True, timeout=600, stdin=subprocess.DEVNULL)
    assert r.returncode == 0, r.stderr
    assert "backend:" in r.stdout and "round trip:   OK" in r.stdout


def test_bad_backend_setting_is_one_line():
    env = _env(SSMZIP_BACKEND="bogus")
    for cmd in ([sys.executable, "-m", "ssmzip", "-c"], [sys.executable, "-m", "ssmzip.demo", "--size", "100"]):
        r = subprocess.run(cmd, input=b"abc", capture_output=True, timeout=300, env=env, cwd=PACKAGE_HOME)
        assert r.returncode == 1 and b"Traceback" not in r.stderr
        assert b"SSMZIP_BACKEND" in r.stderr and len(r.stderr.strip().splitlines()) == 1
