"""Blocks coded as one batch: the SSMs on torch, the context models on the CPU.

Each block keeps its own context models, mixers and coder (the C kernel, one
BlockState per block, as on the CPU backend) and its own SSM; the B SSMs are
one BatchSSM, so every tensor operation advances all blocks. The bytes are the
CPU backend's: the SSM gives the same logits, the rest is the same kernel.

An encoder knows every byte in advance, so the SSM runs ahead a whole segment
(chunk by chunk: one forward over the chunk's rows, then the learning step),
and the kernel then codes the segment reading the logits along each byte's
path. A decoder learns a byte only by decoding it: it steps all blocks one byte
at a time -- the SSM's forward pass and all 255 node logits of the next byte,
then each block's kernel decodes that byte reading them.
"""
from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import numpy as np
import torch

from ..engine.block import BlockDecoder, BlockEncoder
from ..engine.cm_layout import SEGMENT
from ..engine.state import BlockState
from ..parallel import available_cores
from . import inputs
from .feed import PATH, TABLE, Feed
from .ssm_torch import BatchSSM


def _groups(rows: np.ndarray, preset, device) -> tuple:
    """ngram_groups of a chunk's rows (B, T, NG) as trimmed tensors."""
    B, T, ng = rows.shape
    target = np.empty((B, T * ng), dtype=np.int64)
    uses = np.empty((B, T * ng, T), dtype=np.int64)
    u, m = inputs.ngram_groups(rows, ng, preset.ssm_ngram_bits, target, uses)
    return (torch.from_numpy(np.ascontiguousarray(target[:, :u])).to(device),
            torch.from_numpy(np.ascontiguousarray(uses[:, :u, :m])).to(device))


def encode_blocks(blocks, preset, device="cpu", progress=None, threads=None) -> list:
    """Encode blocks (bytes-like, one preset with an SSM) together; the payloads
    are encode_block's, byte for byte. progress(n) gets the bytes coded so far.
    The context models of different blocks run on `threads` host threads (default:
    every core; the C kernel runs without the interpreter lock)."""
    B, T = len(blocks), preset.ssm_chunk
    ssm = BatchSSM(preset, B, device)
    feeds = [Feed(PATH, T) for _ in range(B)]
    encs = [BlockEncoder(b, BlockState(preset, ssm_feed=f)) for b, f in zip(blocks, feeds)]
    with ThreadPoolExecutor(max(1, min(B, threads or available_cores()))) as pool:
        _encode_segments(ssm, encs, feeds, preset, device, pool, progress)
    return [e.finish() for e in encs]


def _encode_segments(ssm, encs, feeds, preset, device, pool, progress) -> None:
    """The SSM runs ahead over a segment of every block, then their kernels code it."""
    B, T, ng = len(encs), preset.ssm_chunk, max(preset.ssm_ngram, 1)
    dims = preset.ssm_shape().dims
    sizes = [len(e.buf) for e in encs]
    regs = np.zeros((B, inputs.N_REGS), dtype=np.int64)
    seg = max(T, SEGMENT // T * T)                  # segments start at a chunk boundary
    done = 0
    for s0 in range(0, max(sizes, default=0), seg):
        n = min(seg, max(sizes) - s0)
        tokens = np.zeros((B, n), dtype=np.int64)
        rows = np.zeros((B, n, ng), dtype=np.int64)
        targets = np.zeros((B, n), dtype=np.int64)
        for b, e in enumerate(encs):
            if s0 < sizes[b]:
                m = min(n, sizes[b] - s0)
                inputs.segment_inputs(e.buf, s0, s0 + m, regs, b, dims, tokens[b], rows[b].reshape(-1),
                                      targets[b])
        tok_d, rows_d, tgt_d = (torch.from_numpy(a).to(device) for a in (tokens, rows, targets))
        logits = torch.empty((B, n, 8), dtype=torch.float32, device=device)
        for c0 in range(0, n, T):
            c1 = min(c0 + T, n)
            ssm.forward(0, tok_d[:, c0:c1], rows_d[:, c0:c1])
            logits[:, c0:c1] = ssm.path_logits(0, tgt_d[:, c0:c1])
            if c1 - c0 == T:                         # a full chunk: learn from it
                ssm.learn(tgt_d[:, c1 - 1], _groups(rows[:, c0:c1], preset, device) if preset.ssm_ngram else None)
        lg = logits.cpu().numpy()
        live = [b for b in range(B) if s0 < sizes[b]]
        for b in live:
            feeds[b].point(np.ascontiguousarray(lg[b]))
        list(pool.map(lambda b: encs[b].code(s0, min(s0 + n, sizes[b])), live))
        done += n
        if progress is not None:
            progress(done)


def decode_blocks(payloads, sizes, preset, device="cpu", progress=None, progress_every=1 << 12) -> list:
    """Decode blocks made by encode_blocks or encode_block (one preset with an SSM)."""
    B, T, ng = len(payloads), preset.ssm_chunk, max(preset.ssm_ngram, 1)
    ssm = BatchSSM(preset, B, device)
    dims = preset.ssm_shape().dims
    feeds = [Feed(TABLE, T) for _ in range(B)]
    decs = [BlockDecoder(p, n, BlockState(preset, ssm_feed=f)) for p, n, f in zip(payloads, sizes, feeds)]
    table = np.zeros((B, 256), dtype=np.float32)
    for b, f in enumerate(feeds):
        f.point(table[b])
    regs = np.zeros((B, inputs.N_REGS), dtype=np.int64)
    tokens = np.zeros(B, dtype=np.int64)
    rows = np.zeros((B, T, ng), dtype=np.int64)
    byte = np.zeros(B, dtype=np.int64)
    n_max = max(sizes, default=0)
    for pos in range(n_max):
        t = pos % T
        inputs.step_inputs(regs, dims, tokens, rows[:, t])
        ssm.forward(t, torch.from_numpy(tokens[:, None]).to(device), torch.from_numpy(rows[:, t:t + 1]).to(device))
        node = ssm.node_logits(t)
        table[:] = node.cpu().numpy()
        for b, d in enumerate(decs):
            if pos < sizes[b]:
                d.code(pos, pos + 1)
                byte[b] = d.buf[pos]
        byte_d = torch.from_numpy(byte).to(device)
        ssm.keep_logits(t, node, byte_d)
        inputs.advance_all(regs, byte)
        if t == T - 1:
            ssm.learn(byte_d, _groups(rows, preset, device) if preset.ssm_ngram else None)
        if progress is not None and (pos + 1) % progress_every == 0:
            progress(pos + 1)
    if progress is not None:
        progress(n_max)
    return [d.buf.tobytes() for d in decs]
