"""Fused Triton kernel for the significance score's column sums (GPU path; no ``L x L`` write at all).

One program handles ``BLOCK_M`` query rows of one (example, head): a first pass over the keys computes each row's
log-sum-exp with the online-softmax recurrence, a second pass recomputes ``Q K^T`` block by block, turns it into
probabilities ``exp(s - lse)``, weights each row (``1/H``, or 0 for padded queries under
``mask_padded_queries``) and atomically adds the column sums and the diagonal (self-attention) terms into two
``(B, L)`` fp32 buffers. Probabilities exist only as ``BLOCK_M x BLOCK_N`` tiles in registers.

:func:`~lit_efficiency.power_bert.model.significance_score_qk` uses it for CUDA tensors when Triton is installed;
the blocked PyTorch path is the reference it is tested against (on CPU through ``TRITON_INTERPRET=1``).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

try:  # Triton is optional (GPU machines usually have it; CPU installs usually do not)
    import triton
    import triton.language as tl
except ImportError:  # pragma: no cover - depends on the installation
    triton = None


def triton_available() -> bool:
    """Whether the Triton kernel can be launched (Triton installed)."""
    return triton is not None


if triton is not None:

    @triton.jit
    def _score_tile(q, k_base, bias_base, start, dims, seq_len, head_dim, s_kl, scale, BLOCK_N: tl.constexpr):
        """Scaled, masked scores ``q K^T + bias`` of the key block at ``start`` (both passes recompute them)."""
        cols = start + tl.arange(0, BLOCK_N)
        col_ok = cols < seq_len
        k = tl.load(
            k_base + cols[:, None] * s_kl + dims[None, :], mask=col_ok[:, None] & (dims[None, :] < head_dim), other=0.0
        )
        bias = tl.load(bias_base + cols, mask=col_ok, other=float("-inf")).to(tl.float32)
        return tl.dot(q, tl.trans(k), input_precision="ieee") * scale + bias[None, :], cols, col_ok

    @triton.jit
    def _score_terms_kernel(
        q_ptr, k_ptr, bias_ptr, w_ptr, col_ptr, diag_ptr,
        heads, seq_len, head_dim, scale,
        s_qb, s_qh, s_ql, s_kb, s_kh, s_kl,
        BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr, MAX_LEN: tl.constexpr,
    ):  # fmt: skip
        pid_m = tl.program_id(0)
        pid_bh = tl.program_id(1)
        b = pid_bh // heads
        h = pid_bh % heads
        rows = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
        dims = tl.arange(0, BLOCK_D)
        row_ok = rows < seq_len
        q = tl.load(
            q_ptr + b * s_qb + h * s_qh + rows[:, None] * s_ql + dims[None, :],
            mask=row_ok[:, None] & (dims[None, :] < head_dim),
            other=0.0,
        )
        m_i = tl.full([BLOCK_M], float("-inf"), tl.float32)
        l_i = tl.zeros([BLOCK_M], tl.float32)
        # Static trip counts (MAX_LEN: seq_len rounded up to a power of two), blocks past seq_len skipped: a loop
        # bounded by the runtime seq_len cannot run under the Triton interpreter (TRITON_INTERPRET=1) with NumPy 2.
        for start in range(0, MAX_LEN, BLOCK_N):  # pass 1: row log-sum-exp (online softmax)
            if start < seq_len:
                s, cols, col_ok = _score_tile(q, k_ptr + b * s_kb + h * s_kh, bias_ptr + b * seq_len, start, dims,
                                              seq_len, head_dim, s_kl, scale, BLOCK_N)  # fmt: skip
                m_new = tl.maximum(m_i, tl.max(s, 1))
                l_i = l_i * tl.exp(m_i - m_new) + tl.sum(tl.exp(s - m_new[:, None]), 1)
                m_i = m_new
        lse = m_i + tl.log(l_i)
        weight = tl.load(w_ptr + b * seq_len + rows, mask=row_ok, other=0.0).to(tl.float32)
        for start in range(0, MAX_LEN, BLOCK_N):  # pass 2: weighted probabilities -> column sums and diagonal
            if start < seq_len:
                s, cols, col_ok = _score_tile(q, k_ptr + b * s_kb + h * s_kh, bias_ptr + b * seq_len, start, dims,
                                              seq_len, head_dim, s_kl, scale, BLOCK_N)  # fmt: skip
                p = tl.exp(s - lse[:, None]) * weight[:, None]
                tl.atomic_add(col_ptr + b * seq_len + cols, tl.sum(p, 0), mask=col_ok)
                diag = tl.sum(tl.where(rows[:, None] == cols[None, :], p, 0.0), 0)
                tl.atomic_add(diag_ptr + b * seq_len + cols, diag, mask=col_ok)


def score_terms_triton(query: Tensor, key: Tensor, bias: Tensor, weight: Tensor) -> tuple[Tensor, Tensor]:
    """Weighted column sums and diagonal terms of ``softmax(Q K^T / sqrt(d) + bias)`` over all heads and rows.

    Shapes:
        - query, key: ``(B, H, L, d)``; bias: ``(B, 1, 1, L)`` additive key mask; weight: ``(B, L)`` per query row
        - output: column sums ``(B, L)`` and diagonal terms ``(B, L)``, fp32
    """
    if triton is None:
        raise RuntimeError("score_terms_triton needs Triton (pip install triton)")
    bsz, heads, seq_len, head_dim = query.shape
    # No copies where none is needed (each is a kernel launch: eager on a GPU is launch-bound): the kernel takes
    # (B, H, L) strides of Q and K (the head split is a view), reads bias and weights in their dtype, and one
    # zero-filled buffer holds both outputs.
    query, key = (x if x.stride(-1) == 1 else x.contiguous() for x in (query, key))
    bias, weight = bias.reshape(bsz, seq_len).contiguous(), weight.contiguous()
    columns, diagonal = torch.zeros(2, bsz, seq_len, dtype=torch.float32, device=query.device)
    block_m = block_n = 32 if seq_len > 16 else 16
    grid = (triton.cdiv(seq_len, block_m), bsz * heads)
    _score_terms_kernel[grid](
        query, key, bias, weight, columns, diagonal,
        heads, seq_len, head_dim, 1.0 / math.sqrt(head_dim),
        query.stride(0), query.stride(1), query.stride(2), key.stride(0), key.stride(1), key.stride(2),
        BLOCK_M=block_m, BLOCK_N=block_n, BLOCK_D=max(16, triton.next_power_of_2(head_dim)),
        MAX_LEN=max(block_n, triton.next_power_of_2(seq_len)),
    )  # fmt: skip
    return columns, diagonal
