"""ssmzip.kv format stability: a small archive made once must decode, and re-encoding must reproduce it;
an archive of the previous version (8-lane rANS) must still decode.

If this test fails after a change to ssmzip/kv, the change altered the format:
bump archive.VERSION (and keep reading the older versions) or say clearly that it is not read.
"""
import numpy as np

import ssmzip.kv as kv

GOLDEN_V1 = bytes.fromhex(  # version 1: 8-lane streams (written before 32-lane rANS)
    "fd53534b56000d0a010000000000000008010801760887048f05dc069d05f207b2019601373eb55c69001cb80b00c4b5"
    "010231723f0236c04e06b546350044d80d00f23d07001aff7fa485e5b5427ac90a0a049bb1a9fbb789ab1c9d0391bafd"
    "ee146b48e3caf6af73384953a407a5167b46a6a5f81916b5c60c92630204a4fcc7f6abf68e4b3a63dfa882f46fa98428"
    "cabe3f89469bdb470de1232c230536369a5c002ba5a0f1478dfbf8cce8a9d0b6fa0da1c7c51f2cbe9a5646dcab98b50a"
    "79c1cc3704dc9615e8efed2b642ae41a34c2b03d81aacca7379049ad66c2c199318c59ab5925c08972cbe49797f2a858"
    "2fefee500268c880b64be197a9e6c60fd263a72403b5266281c875e21120e488995bc5e111f578aa1d7d55a755bb2e35"
    "4230e7c7c49145a7747f70da7f0a37fa6c6fb8e83552e751340e96a5020d037857d91289f790386eaf9128be26cb12e2"
    "cea3cf2f720c7f561b7922a007d27d66e70aada76288cbb76097f533feab61f25c7cb85c3734fff0d8d4af1ebdc060af"
    "e8b86112574e69a56b922686b440b79dac607112c6be7c552d7871bece40fa815598c09bedd339e3321c1e6f5270aacd"
    "adfdad6fcbaaa619e59229f1c4d677e72642e10b079ea05275a0eba0c8242d01000302140f0101ac02bf03b4de9bf0ae"
    "7db87400cf010000000000001500000065b4d4dc53534b56454e4400"
)

GOLDEN = bytes.fromhex(  # version 3: 32-lane streams
    "fd53534b56000d0a030000000000000088010801760887048f05dc069d05f207b20196013761983a1903e478c40f73f5"
    "31007d12060771809c000af65f02053901002f7cb503b3f968076ec95001f44b3a0032c73602f09c7c0080b12c054701"
    "1e0058da44312ebffb001d5f600021777400dc317d0755201000c2ac7f001843a50014e72700d123970008922d008cf6"
    "0b0068e3b200e9952e0009281901829b1300cf4d080080cd8af9d5630a1239c2d375490acb5a154ce7c2ff80f074356d"
    "94e2edc7f127fdc9f765ce9efa5e9dff7a719a7f50354489fdab47dfa66303e48c1e0082979f3c38002ba5a0f1478dfb"
    "f8cce8a9d0b6fa0da1c7c51f2cbe9a5646dcab98b50a79c1cc3704dc9615e8efed2b642ae41a34c2b03d81aacca73790"
    "49ad66c2c199318c59ab5925c08972cbe49797f2a8582fefee500268c880b64be197a9e6c60fd263a72403b5266281c8"
    "75e21120e488995bc5e111f578aa1d7d55a755bb2e354230e7c7c49145a7747f70da7f0a37fa6c6fb8e83552e751340e"
    "96a5020d037857d91289f790386eaf9128be26cb12e2cea3cf2f720c7f561b7922a007d27d66e70aada76288cbb76097"
    "f533feab61f25c7cb85c3734fff0d8d4af1ebdc060afe8b86112574e69a56b922686b440b79dac607112c6be7c552d78"
    "71bece40fa815598c09bedd339e3321c1e6f5270aacdadfdad6fcbaaa619e59229f1c4d677e72642e10b079ea05275a0"
    "eba0c8242d01000302140f0101ac028504b4de9bf0ae7db8740015020000000000001500000084bccdf453534b56454e"
    "4400"
)


def golden_tensor():
    """300 bf16 words from an integer LCG (no float maths, no numpy RNG: identical everywhere)."""
    x = np.zeros(300, np.uint64)
    s = 12345
    for i in range(300):
        s = (s * 6364136223846793005 + 1442695040888963407) % (1 << 64)
        x[i] = s >> 33
    x = x.astype(np.int64)
    exp = 118 + (x % 5) + (x % 3 == 0) * ((x >> 5) % 4)
    w = ((x >> 20) & 1) << 15 | exp << 7 | (x >> 8) & 0x7F
    return w.astype(np.uint16).reshape(20, 15)


def test_golden_decodes():
    for data, version in ((GOLDEN, 3), (GOLDEN_V1, 1)):
        info = kv.inspect(data)
        assert info["version"] == version
        assert info["tensors"][0]["dtype"] == "bfloat16" and info["tensors"][0]["methods"] == ["split"]
        assert np.array_equal(kv.decode(data), golden_tensor())


def test_golden_reencodes_identically():
    assert kv.encode(golden_tensor(), dtype="bfloat16") == GOLDEN


def test_lanes_must_match_the_version():
    """A version-3 archive whose header claims version 1 fails on its 32-lane chunk (and vice versa)."""
    import pytest
    from ssmzip.errors import SSMZipError
    for data, other in ((GOLDEN, 1), (GOLDEN_V1, 3)):
        bad = bytearray(data)
        bad[8] = other
        with pytest.raises(SSMZipError, match="lane"):
            kv.decode(bytes(bad))
