"""Compress a file with one part of a level's model switched off (the SSM ablation).

    python -m bench.ablation_runner {cm,ssm,full} LEVEL FILE > FILE.ssz

cm: the context models alone (the level without its SSM); ssm: the SSM alone
(no context models, match model, mixer or APMs); full: the level as shipped.
The output is a normal .ssz file: its header carries the preset, so the
ordinary `python -m ssmzip -d` decompresses it. Run in a child process so that
timing and memory are measured as for every other system.
"""
import sys

import ssmzip
from ssmzip.engine import preset_for_level, ssm_only, without_ssm

VARIANTS = {"cm": without_ssm, "ssm": ssm_only, "full": lambda p: p}


def main(argv):
    variant, level, path = argv[0], int(argv[1]), argv[2]
    preset = VARIANTS[variant](preset_for_level(level))
    with open(path, "rb") as f:
        data = f.read()
    sys.stdout.buffer.write(ssmzip.compress(data, preset=preset))


if __name__ == "__main__":
    main(sys.argv[1:])
