"""Stand-in for the ssmzip CLI while it does not exist: compress or decompress a
file with the engine's pure functions, writing to stdout.

    python -m bench.api_runner compress LEVEL FILE > out
    python -m bench.api_runner decompress 0 FILE > out

The output is a bench-private wrapper (8-byte size, 1-byte level, then the
engine's payload), not the ssmzip file format: the 9-byte wrapper is smaller
than the real container's header, so sizes measured this way are a little
optimistic. Run in a child process so that timing and memory are measured the
same way as for the CLI and the peers.
"""
import struct
import sys

from ssmzip.engine import decode_block, encode_block, preset_for_level

_HEAD = struct.Struct("<QB")


def main(argv):
    op, level, path = argv[0], int(argv[1]), argv[2]
    with open(path, "rb") as f:
        data = f.read()
    if op == "compress":
        out = _HEAD.pack(len(data), level) + encode_block(data, preset_for_level(level))
    elif op == "decompress":
        size, level = _HEAD.unpack_from(data)
        out = decode_block(data[_HEAD.size:], size, preset_for_level(level))
    else:
        raise SystemExit(f"unknown operation {op!r}")
    sys.stdout.buffer.write(out)


if __name__ == "__main__":
    main(sys.argv[1:])
