"""GPU mode: the SSM of levels 7-9 on torch, many blocks advanced as one batch.

torch is an optional extra (``pip install 'ssmzip[gpu]'``); nothing outside
this package imports it, and this file imports it only when asked to. The
output is the CPU backend's, byte for byte, on any device.

    ssm_torch.py  the SSM for B blocks at once, in the numba kernels' arithmetic
    inputs.py     each row's input byte and n-gram rows; the n-gram step's groups
    feed.py       callbacks through which the C context-model kernel reads its logits
    coder.py      encode_blocks / decode_blocks: blocks coded as one batch
    device.py     which torch device, and clear errors when there is none

The API reaches it through ssmzip/batching.py (the block pool over batches).
"""
