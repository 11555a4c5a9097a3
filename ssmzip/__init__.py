"""ssmzip: a lossless compressor (online-learned context mixing + arithmetic coding).

    import ssmzip
    blob = ssmzip.compress(b"hello" * 1000, level=6)
    assert ssmzip.decompress(blob) == b"hello" * 1000

See ``ssmzip.api`` for the file interface (``ssmzip.open``) and ``ssmzip --help``
for the command line.
"""
from .api import SSMZipFile, StreamInfo, compress, compress_many, decompress, decompress_many, info, open
from .errors import SSMZipError

__version__ = "0.1.0"

__all__ = ["compress", "decompress", "compress_many", "decompress_many", "open", "info", "SSMZipFile", "StreamInfo",
           "SSMZipError", "__version__"]
