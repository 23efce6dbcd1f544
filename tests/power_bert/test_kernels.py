"""The fused Triton score kernel equals the blocked PyTorch score: CPU through the Triton interpreter, and on CUDA."""

from __future__ import annotations

import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from lit_efficiency.power_bert.bert import additive_attention_mask
from lit_efficiency.power_bert.model import significance_score, significance_score_qk

ROOT = Path(__file__).resolve().parents[2]

#: Runs in a fresh interpreter: TRITON_INTERPRET must be set before the kernel is defined.
INTERPRETED_CHECK = """
import math, torch
from lit_efficiency.power_bert.bert import additive_attention_mask
from lit_efficiency.power_bert.kernels import score_terms_triton
from lit_efficiency.power_bert.model import query_weights, significance_score
worst = 0.0
for seq_len, dim in ((1, 4), (7, 8), (33, 12)):
    gen = torch.Generator().manual_seed(seq_len)
    q, k = (torch.randn(2, 3, seq_len, dim, generator=gen) for _ in range(2))
    mask = torch.ones(2, seq_len)
    mask[1, seq_len // 2 + 1 :] = 0
    bias = additive_attention_mask(mask, q.dtype)
    probs = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(dim) + bias, dim=-1)
    for mask_queries in (False, True):
        columns, diagonal = score_terms_triton(q, k, bias, query_weights(mask, 3, mask_queries))
        got = (columns - diagonal) * mask
        worst = max(worst, (got - significance_score(probs, mask, mask_queries)).abs().max().item())
print(worst)
"""


# Triton comes with CUDA builds of torch (about 1 GB, not in the CPU install), so this runs in the GPU check
# (`make gpu-check`), on the machine's CPU through the interpreter: ~15 s.
@pytest.mark.gpu
def test_triton_kernel_equals_score_under_the_interpreter():
    pytest.importorskip("triton")
    env = {**os.environ, "TRITON_INTERPRET": "1", "PYTHONPATH": str(ROOT)}
    run = subprocess.run(
        [sys.executable, "-c", INTERPRETED_CHECK], capture_output=True, text=True, env=env, cwd=ROOT, timeout=300
    )
    assert run.returncode == 0, run.stderr
    assert float(run.stdout.strip().splitlines()[-1]) < 1e-5


@pytest.mark.gpu
def test_cuda_score_uses_the_kernel_and_equals_the_cpu_score():
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA GPU (torch.cuda.is_available() is False)")
    pytest.importorskip("triton")
    gen = torch.Generator().manual_seed(0)
    q, k = (torch.randn(4, 12, 128, 64, generator=gen) for _ in range(2))
    mask = torch.ones(4, 128)
    mask[1, 70:] = 0
    bias = additive_attention_mask(mask, q.dtype)
    want = significance_score(torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(64) + bias, -1), mask)
    got = significance_score_qk(q.cuda(), k.cuda(), bias.cuda(), mask.cuda())
    torch.testing.assert_close(got.cpu(), want, atol=1e-4, rtol=1e-4)
