r"""PoWER-BERT: progressive word-vector elimination on top of :class:`~lit_efficiency.power_bert.bert.BertEncoder`.

Paper: Goyal, Choudhury, Raje, Chakaravarthy, Sabharwal, Verma, "PoWER-BERT: Accelerating BERT Inference via
Progressive Word-vector Elimination", ICML 2020, https://arxiv.org/abs/2001.08950 (reference code: IBM/PoWER-BERT,
Keras). Everything here is written from the paper and the project spec; no code is taken from the reference.

Modifications relative to :class:`~lit_efficiency.power_bert.bert.BertEncoder`, all inside one layer, between the
attention sub-layer (after its residual Add & LayerNorm) and the feed-forward sub-layer:

* ``mode="soft"`` (configuration search): a :class:`SoftExtract` per layer scales the token of significance rank
  ``i`` by a learned ``r_j[i]``; nothing is removed.
* ``mode="hard"`` (retrain / inference): :func:`extract` keeps [CLS] plus the ``l_j - 1`` most significant other
  tokens, in their original order, so every later matrix product is smaller.
* ``mode="none"``: the plain encoder.

Differences from the reference implementation:

* The attention mask is *gathered* with the kept indices (the reference truncates it, which is only right under
  right padding); padded tokens get score ``-inf`` and are eliminated before any real token.
* Hard mode computes attention probabilities only in layers that drop tokens (elsewhere fused SDPA), and in those
  layers computes ``P V``, the output projection and the residual LayerNorm for the kept rows only. LayerNorm is
  row-wise, so this equals "full sub-layer, then gather".
* With dynamic padding a batch may be shorter than ``l_j``; the layer then keeps everything (``min(l_j, L)``).
* For ALBERT the layer weights are shared, but every layer application has its own ``r_j`` and ``l_j``.
"""

from __future__ import annotations

import copy
import logging
import math
import os
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor, wait
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Literal, NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from typing_extensions import override

from lit_efficiency.core import memory
from lit_efficiency.core.errors import ConfigError
from lit_efficiency.core.paths import resolve_pretrained
from lit_efficiency.power_bert.autoload import MODEL_TYPE
from lit_efficiency.power_bert.bert import (
    BertEncoder,
    BertEncoderOutput,
    LayerState,
    additive_attention_mask,
    check_config,
    family_of,
    load_hf_config,
    num_layer_applications,
    read_hf_weights,
    save_hf_folder,
)
from lit_efficiency.power_bert.cpu_linear import use_packed_linears
from lit_efficiency.power_bert.retention import validate_retention

if TYPE_CHECKING:
    from transformers import PretrainedConfig

log = logging.getLogger(__name__)

Mode = Literal["none", "soft", "hard"]
MODES: tuple[str, ...] = ("none", "soft", "hard")


# ---------------------------------------------------------------------- core operators
def significance_score(probs: Tensor, key_mask: Tensor, mask_padded_queries: bool = False) -> Tensor:
    r"""Significance of every token: the attention it receives, summed over queries, averaged over heads.

    .. math::
        \mathrm{sig}[b, k] = \sum_q \frac{1}{H} \sum_h A[b, h, q, k] - \frac{1}{H} \sum_h A[b, h, k, k]

    The self-attention term is subtracted, and padded keys get 0. As in the reference implementation, the rows
    of padded *queries* still contribute unless ``mask_padded_queries=True`` (as LTP does). This is the definition
    on materialised probabilities; the encoder computes the same value block by block from ``Q`` and ``K``
    (:func:`significance_score_qk`).

    Args:
        probs: attention probabilities (softmax output, before dropout).
        key_mask: 1 for real tokens, 0 for padding.
        mask_padded_queries: drop the contribution of padded query rows.

    Shapes:
        - probs: ``(B, H, L, L)``
        - key_mask: ``(B, L)``
        - output: ``(B, L)``, same dtype as ``probs``
    """
    bsz, heads, seq_len, _ = probs.shape
    real = (key_mask != 0).to(probs.dtype)
    weight = _pair_weights(query_weights(real, heads, mask_padded_queries), heads)
    columns, diagonal = _score_terms(probs.reshape(bsz * heads, seq_len, seq_len), weight, 0)
    return _head_average(columns, diagonal, real)


def query_weights(real: Tensor, heads: int, mask_padded_queries: bool) -> Tensor:
    """Weight of each query row in the score: ``1/H`` (head mean), 0 for padded rows under ``mask_padded_queries``.

    Shapes:
        - real: ``(B, L)`` 1 for real tokens, 0 for padding
        - output: ``(B, L)``
    """
    return (real if mask_padded_queries else torch.ones_like(real)) / heads


def _pair_weights(weight: Tensor, heads: int) -> Tensor:
    """Query-row weights repeated for every head: ``(B, L)`` -> ``(B * H, 1, L)`` (one row per batch-head pair)."""
    bsz, seq_len = weight.shape
    return weight[:, None, None, :].expand(bsz, heads, 1, seq_len).reshape(bsz * heads, 1, seq_len)


def _score_terms(probs: Tensor, weight: Tensor, start: int) -> tuple[Tensor, Tensor]:
    """Weighted column sums and weighted self-attention terms of the query rows ``start .. start + Lq - 1``.

    Shapes:
        - probs: ``(P, Lq, L)``, query rows ``start ..`` of ``P`` batch-head pairs; weight: ``(P, 1, L)``
        - output: column sums ``(P, L)`` and self-attention terms ``(P, Lq)`` of the block's rows
    """
    rows = probs.shape[1]
    weight = weight[:, :, start : start + rows]  # (P, 1, Lq)
    columns = torch.bmm(weight, probs)[:, 0]
    diagonal = probs[:, :, start : start + rows].diagonal(dim1=-2, dim2=-1) * weight[:, 0]
    return columns, diagonal


def _head_average(columns: Tensor, diagonal: Tensor, real: Tensor) -> Tensor:
    """Score from per-pair terms: ``(B * H, L)`` column sums and self terms -> ``(B, L)``, 0 at padded keys."""
    bsz, seq_len = real.shape
    return (columns - diagonal).view(bsz, -1, seq_len).sum(dim=1) * real


#: Input shapes :meth:`PowerBertForSequenceClassification.compile_for_inference` lets Dynamo compile per process
#: (its ``recompile_limit``, counted over all compiled models: 8 by default): a batch size times a few length buckets.
SHAPES_PER_PROCESS = 64

#: Upper bound on the elements of one block of probabilities in :func:`significance_score_qk`: 1 MiB in fp32, so
#: a block stays in a core's L2 cache between the matmul that writes it, the softmax and the column sum.
SCORE_BLOCK_ELEMENTS = 1 << 18

#: Blocks per layer, about, when the score is traced (``torch.compile``, ``torch.export``, ONNX) instead of run: a
#: traced loop is unrolled into the graph, so cache-sized blocks at batch 128 and N = 256 put 470 softmaxes and
#: 9,400 ops into the exported program, and the ONNX exporter's optimiser ran for over an hour. Traced, a block
#: holds at least 1/TRACED_SCORE_BLOCKS of the layer's probabilities. MiniLM-L6 at RTE's retention, batch 128, one
#: thread, random inputs: ONNX export and the forward's time compiled / in onnxruntime against eager's: 16 blocks
#: 22 s, 1.08x / 1.01x; 32 blocks 40 s, 1.03x / 0.92x (tests shared the CPU); 64 blocks 104 s, 0.98x / 0.92x. A
#: block is 12.6 MB there: where glibc returns such buffers to the OS, every call faults them in again (the engine
#: benchmark's ``sys_ms``), which is why :meth:`~PowerBertForSequenceClassification.compile_for_inference` keeps
#: freed memory (:func:`~lit_efficiency.core.memory.keep_freed_memory`).
TRACED_SCORE_BLOCKS = 32


def _score_blocks(pairs: int, seq_len: int, traced: bool) -> tuple[int, int]:
    """``(rows, pairs_per_block)`` of :func:`_blocked_score`'s blocks: at most :data:`SCORE_BLOCK_ELEMENTS`
    probabilities each, or, when ``traced``, about :data:`TRACED_SCORE_BLOCKS` blocks for the whole layer."""
    elements = SCORE_BLOCK_ELEMENTS
    if traced:
        elements = max(elements, math.ceil(pairs * seq_len * seq_len / TRACED_SCORE_BLOCKS))
    rows = min(seq_len, max(1, elements // seq_len))
    return rows, max(1, elements // (rows * seq_len))


@torch.no_grad()
def significance_score_qk(
    query: Tensor, key: Tensor, bias: Tensor, key_mask: Tensor, mask_padded_queries: bool = False
) -> Tensor:
    r""":func:`significance_score` from ``Q`` and ``K``, without materialising all ``(B, H, L, L)`` probabilities.

    On CUDA with Triton installed, a fused kernel computes it without writing any probabilities
    (:func:`~lit_efficiency.power_bert.kernels.score_terms_triton`); under ``torch.compile`` on CUDA, the plain
    formula, which Inductor fuses itself. Elsewhere the batch-head pairs (and, for very
    long sequences, the query rows) are processed in blocks of at most :data:`SCORE_BLOCK_ELEMENTS` probabilities:
    each block's scores ``Q_blk K^T / sqrt(d) + bias`` come from one ``baddbmm`` and are normalised by a softmax
    over complete rows; only the weighted column sums and the self-attention terms of the block are kept. Blocks
    small enough for the cache make the matmul, softmax and column sum one trip to memory (traced for CPU by
    ``torch.compile`` or an export, the blocks are fewer and larger: :data:`TRACED_SCORE_BLOCKS`); in eager mode
    every op runs on one intra-op thread (:func:`_one_intra_op_thread`) and the blocks are shared among as many
    Python threads as the caller had intra-op threads (:func:`_blocked_score`). The score selects
    tokens and ranks them, so it carries no gradient.

    Shapes:
        - query, key: ``(B, H, L, d)``; bias: ``(B, 1, 1, L)`` additive mask; key_mask: ``(B, L)``
        - output: ``(B, L)`` in the dtype of ``query``
    """
    bsz, heads, seq_len, head_dim = query.shape
    if query.is_cuda and torch.compiler.is_compiling():
        # Inductor fuses the plain formula into its own kernels; the hand-written one is for eager and CUDA graphs.
        # Accumulated in fp32, as the kernel does (fp16 sums move near-ties).
        scores = query.float() @ key.float().transpose(-1, -2) / math.sqrt(head_dim) + bias.float()
        return significance_score(torch.softmax(scores, dim=-1), key_mask, mask_padded_queries).to(query.dtype)
    real = (key_mask != 0).to(query.dtype)
    weight = query_weights(real, heads, mask_padded_queries)
    if query.is_cuda:
        from lit_efficiency.power_bert import kernels  # imports Triton: only on the GPU path

        if kernels.triton_available():
            columns, diagonal = kernels.score_terms_triton(query, key, bias, weight)
            return ((columns - diagonal) * real).to(query.dtype)
    workers = 1 if torch.compiler.is_compiling() else torch.get_num_threads()
    with _one_intra_op_thread():
        return _blocked_score(query, key, bias, weight, real, workers)


@contextmanager
def _one_intra_op_thread() -> Iterator[None]:
    """Run the enclosed eager CPU ops on one intra-op thread (no-op while compiling or exporting).

    The blocked score is a chain of small, cache-sized ops (about five per block, hundreds per layer); with
    several intra-op threads each op is a parallel region whose threads must all be scheduled before it ends.
    On a loaded CPU that hand-off costs milliseconds per op (measured on 2 busy cores: 1.1 s per layer at
    B=128, L=128 with 2 threads against 0.28 s on one; 48 ms against 0.8 ms at B=1, L=25). The cores are used
    instead by :func:`_blocked_score`'s worker threads, one block at a time each, with one join per layer.
    """
    if torch.compiler.is_compiling() or torch.get_num_threads() == 1:
        yield
        return
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


_SCORE_POOL: tuple[int, ThreadPoolExecutor] | None = None  # (workers, pool)


def _score_pool(workers: int) -> ThreadPoolExecutor:
    """The worker threads of :func:`_blocked_score` (``workers - 1`` of them: the caller is the other one)."""
    global _SCORE_POOL
    if _SCORE_POOL is None or _SCORE_POOL[0] != workers:
        if _SCORE_POOL is not None:
            _SCORE_POOL[1].shutdown(wait=False)
        _SCORE_POOL = (workers, ThreadPoolExecutor(workers - 1, thread_name_prefix="power-bert-score"))
    return _SCORE_POOL[1]


def _forget_score_pool() -> None:
    """In a forked child (DataLoader workers) the parent's pool threads do not exist: start a new pool if needed."""
    global _SCORE_POOL
    _SCORE_POOL = None


os.register_at_fork(after_in_child=_forget_score_pool)


def _on_one_thread(fn: Callable[[], None], inference: bool, autocast: tuple[bool, torch.dtype]) -> None:
    """Run ``fn`` in a pool thread with one intra-op thread and the caller's grad, inference and CPU autocast modes
    (all thread-local: a new thread starts with the process defaults)."""
    if torch.get_num_threads() != 1:
        torch.set_num_threads(1)
    mode = torch.inference_mode() if inference else torch.no_grad()
    with mode, torch.autocast("cpu", dtype=autocast[1], enabled=autocast[0]):
        fn()


def _blocked_score(query: Tensor, key: Tensor, bias: Tensor, weight: Tensor, real: Tensor, workers: int = 1) -> Tensor:
    """:func:`significance_score_qk` on CPU, block by block (:func:`_score_blocks` sizes them).

    With ``workers > 1`` the blocks of (batch, head) pairs are split into ``workers`` contiguous runs; the caller
    computes the first and pool threads the others, each op on one intra-op thread (the ops release the GIL), and
    every run writes its own rows of the result. On 2 idle cores this takes the score of an MRPC layer (B = 128,
    L = 128) from 58 ms to 37 ms, against 47 ms for 2 intra-op threads per op; the values are the same bits.
    """
    bsz, heads, seq_len, head_dim = query.shape
    pairs = bsz * heads
    rows, pairs_per_block = _score_blocks(pairs, seq_len, traced=torch.compiler.is_compiling())
    scale = 1.0 / math.sqrt(head_dim)
    query = query.reshape(pairs, seq_len, head_dim)
    key_t = key.reshape(pairs, seq_len, head_dim).transpose(-1, -2)
    bias = bias.expand(bsz, heads, 1, seq_len).reshape(pairs, 1, seq_len)
    weight = _pair_weights(weight, heads)
    columns = torch.zeros(pairs, seq_len, dtype=query.dtype, device=query.device)
    diagonal = torch.empty_like(columns)

    def run(firsts: range) -> None:
        for p in firsts:
            block = slice(p, p + pairs_per_block)
            for start in range(0, seq_len, rows):
                scores = torch.baddbmm(bias[block], query[block, start : start + rows], key_t[block], alpha=scale)
                col, diag = _score_terms(torch.softmax(scores, dim=-1), weight[block], start)
                columns[block] += col
                diagonal[block, start : start + rows] = diag

    firsts = range(0, pairs, pairs_per_block)
    share = math.ceil(len(firsts) / max(1, min(workers, len(firsts))))
    runs = [firsts[i : i + share] for i in range(0, len(firsts), share)]
    if len(runs) == 1:
        run(firsts)
    else:
        pool = _score_pool(workers)  # sized by the thread count, not by this layer's blocks: one pool for all layers
        modes = (torch.is_inference_mode_enabled(), (torch.is_autocast_enabled("cpu"), torch.get_autocast_dtype("cpu")))
        futures = [pool.submit(_on_one_thread, lambda part=part: run(part), *modes) for part in runs[1:]]
        try:
            run(runs[0])
        finally:
            wait(futures)  # no worker may still write into columns / diagonal when this returns or raises
        for future in futures:
            future.result()
    return _head_average(columns, diagonal, real)


def select_tokens(sig: Tensor, mask: Tensor, keep: int) -> Tensor:
    """Positions Extract keeps: [CLS] (position 0) plus the ``keep - 1`` most significant others, ascending.

    Padded positions score ``-inf`` so they are dropped before any real token; ties go to the earlier position,
    which makes the choice deterministic. Position 0 must hold [CLS], as BERT tokenizers put it (pad on the right,
    or anywhere but position 0; the mask is gathered, never truncated).

    The ranking is a stable descending sort written with comparisons, a cumulative sum and a scatter (no
    ``sort`` / ``topk``), so it compiles and exports to ONNX with static shapes: token ``k``'s rank is the number
    of tokens scoring higher plus the earlier ones scoring the same, and the kept tokens (rank ``< keep``) are
    written to consecutive slots in position order.

    Shapes:
        - sig, mask: ``(B, L)``
        - output: ``(B, min(keep, L))`` int64 positions, sorted ascending per row
    """
    bsz, seq_len = sig.shape
    keep = min(int(keep), seq_len)
    score = sig.float().masked_fill(mask == 0, float("-inf"))
    score[:, 0] = float("inf")  # [CLS] is always kept
    other, this = score[:, None, :], score[:, :, None]  # [b, k, j] compares token j with token k
    earlier = torch.ones(seq_len, seq_len, dtype=torch.bool, device=sig.device).tril(-1)  # j < k
    rank = ((other > this) | ((other == this) & earlier)).sum(dim=2)  # (B, L): stable descending rank
    kept = rank < keep
    slot = torch.where(kept, kept.long().cumsum(dim=1) - 1, keep)  # dropped tokens go to a spare slot
    positions = torch.arange(seq_len, device=sig.device).expand(bsz, seq_len)
    out = torch.zeros(bsz, keep + 1, dtype=torch.long, device=sig.device).scatter(1, slot, positions)
    return out[:, :keep]


def gather_tokens(x: Tensor, indices: Tensor) -> Tensor:
    """``x[b, indices[b]]`` for every row: ``(B, L, ...)`` and ``(B, K)`` -> ``(B, K, ...)``."""
    idx = indices.view(*indices.shape, *([1] * (x.dim() - 2))).expand(*indices.shape, *x.shape[2:])
    return x.gather(1, idx)


class Extracted(NamedTuple):
    """Result of :func:`extract`: the kept hidden states, their mask and original positions."""

    hidden: Tensor  # (B, K, D)
    mask: Tensor  # (B, K)
    indices: Tensor  # (B, K), ascending positions into the input


def extract(hidden: Tensor, mask: Tensor, sig: Tensor, keep: int) -> Extracted:
    r"""Extract (hard elimination): keep [CLS] and the top ``keep - 1`` other tokens by significance, in order.

    .. math::
        \mathcal{K}_b = \{0\} \cup \operatorname{top}_{keep-1}\{\mathrm{sig}[b, k] : k > 0\}, \qquad
        h'_b = h_b[\operatorname{sorted}(\mathcal{K}_b)]

    Batched (one ``sort`` and ``gather`` for the whole batch); the mask is gathered with the same indices, so any
    padding side is handled. ``keep >= L`` keeps everything.

    Shapes:
        - hidden: ``(B, L, D)``; mask, sig: ``(B, L)``
        - output: hidden ``(B, K, D)``, mask ``(B, K)``, indices ``(B, K)`` with ``K = min(keep, L)``
    """
    indices = select_tokens(sig, mask, keep)
    return Extracted(gather_tokens(hidden, indices), mask.gather(1, indices), indices)


class SoftExtract(nn.Module):
    r"""Soft-Extract layer of the configuration search: scales tokens by a learned weight per significance rank.

    .. math::
        h'_{b,k} = r[\operatorname{rank}_b(k)] \; h_{b,k}, \qquad r \in [0, 1]^N,\ r \leftarrow \mathbf{1}

    where :math:`\operatorname{rank}_b(k)` is the 0-based rank of token ``k`` by descending significance. Positions
    are unchanged and nothing is removed; padded tokens (when a mask is given) rank after every real token.
    The mass :math:`\sum_i r[i]` becomes the layer's retention count
    (:func:`~lit_efficiency.power_bert.retention.induce_retention`).

    Args:
        max_seq_len: ``N``, the padded maximum sequence length (one weight per rank).

    Shapes:
        - hidden: ``(B, L, D)`` with ``L <= N``; sig, mask: ``(B, L)``
        - output: ``(B, L, D)``
    """

    def __init__(self, max_seq_len: int) -> None:
        super().__init__()
        if max_seq_len < 1:
            raise ConfigError(f"max_seq_len={max_seq_len}: must be >= 1")
        self.max_seq_len = int(max_seq_len)
        self.r = nn.Parameter(torch.ones(self.max_seq_len))

    def reset_parameters(self) -> None:
        """Set every weight back to 1 (keep everything)."""
        with torch.no_grad():
            self.r.fill_(1.0)

    def forward(self, hidden: Tensor, sig: Tensor, mask: Tensor | None = None) -> Tensor:
        """Scale each token by ``r`` at its significance rank."""
        seq_len = hidden.shape[1]
        if seq_len > self.max_seq_len:
            raise ValueError(f"sequence length {seq_len} exceeds the Soft-Extract max_seq_len={self.max_seq_len}")
        score = sig.float()
        if mask is not None:
            score = score.masked_fill(mask == 0, float("-inf"))
        order = torch.sort(score, dim=1, descending=True, stable=True).indices  # rank -> position
        rank = order.argsort(dim=1)  # position -> rank
        scale = self.r[rank].to(hidden.dtype)  # (B, L), differentiable in r
        return hidden * scale[..., None]

    @torch.no_grad()
    def clamp_(self) -> SoftExtract:
        """Project ``r`` onto ``[0, 1]`` in place (call after every optimizer step)."""
        self.r.clamp_(0.0, 1.0)
        return self

    def mass(self) -> Tensor:
        """``sum(r)``: the expected number of tokens the layer keeps (0-d tensor, differentiable)."""
        return self.r.sum()

    def extra_repr(self) -> str:
        return f"max_seq_len={self.max_seq_len}"


def mass_penalty(soft_extracts: Iterable[SoftExtract]) -> Tensor:
    r"""PoWER-BERT's retention penalty :math:`\sum_j j \cdot \sum_k r_j[k]` (``j`` 1-based; not divided by batch size).

    The training loss is ``task_loss + lambda * mass_penalty(...)``.
    """
    total: Tensor | None = None
    for j, layer in enumerate(soft_extracts, start=1):
        term = j * layer.mass()
        total = term if total is None else total + term
    if total is None:
        raise ValueError("mass_penalty needs at least one SoftExtract layer")
    return total


# ---------------------------------------------------------------------- encoder
#: The encoder's output (:class:`~lit_efficiency.power_bert.bert.BertEncoderOutput`: kept tokens, their mask and
#: original positions). In hard mode ``attentions[j]`` covers layer ``j``'s *input* tokens.
PowerBertOutput = BertEncoderOutput


class PowerBertEncoder(BertEncoder):
    """BERT / ALBERT encoder with PoWER-BERT word-vector elimination (see the module docstring).

    Args:
        config: ``transformers`` ``BertConfig`` / ``AlbertConfig``.
        mode: ``"none"`` (plain), ``"soft"`` (Soft-Extract, configuration search) or ``"hard"`` (Extract).
        retention: tokens kept per layer application (a list of ints; files are read by
            :func:`~lit_efficiency.power_bert.retention.load_retention` at the edge); required for ``"hard"``.
        max_seq_len: ``N``, the padded maximum length (Soft-Extract size, retention bound). Default: the
            config's ``max_position_embeddings``.
        mask_padded_queries: let padded query rows not count in the significance score (reference: they count).
        add_pooling_layer: build the [CLS] pooler.

    The forward pass is :meth:`BertEncoder.forward` (one layer loop); :meth:`layer_step` is where the modes differ.
    In hard mode the output's ``last_hidden_state`` is ``(B, min(l_n, L), D)``.
    """

    def __init__(
        self,
        config: PretrainedConfig,
        mode: Mode = "none",
        retention: Sequence[int] | None = None,
        max_seq_len: int | None = None,
        mask_padded_queries: bool = False,
        add_pooling_layer: bool = True,
    ) -> None:
        super().__init__(config, add_pooling_layer=add_pooling_layer)
        self.max_seq_len = int(max_seq_len if max_seq_len is not None else self.config.max_position_embeddings)
        if self.max_seq_len < 1:
            raise ConfigError(f"max_seq_len={self.max_seq_len}: must be >= 1")
        self.mask_padded_queries = bool(mask_padded_queries)
        self.mode: Mode = "none"
        self.retention: list[int] | None = None
        self.soft_extracts: nn.ModuleList | None = None
        self.set_mode(mode, retention)

    def set_mode(self, mode: Mode, retention: Sequence[int] | None = None) -> None:
        """Switch stage: ``"soft"`` adds fresh Soft-Extract layers (r = 1) if absent, other modes drop them.

        Args:
            mode: ``"none"``, ``"soft"`` or ``"hard"``.
            retention: new retention configuration; ``"hard"`` needs one (given now or earlier).

        Raises:
            ConfigError: unknown mode, hard mode without retention, or an invalid retention.
        """
        if mode not in MODES:
            raise ConfigError(f"mode={mode!r}: choose one of {', '.join(MODES)}")
        if retention is not None:
            self.retention = validate_retention(retention, self.num_layers, self.max_seq_len)
        if mode == "hard" and self.retention is None:
            raise ConfigError("mode='hard' needs a retention configuration (one token count per layer)")
        if mode == "soft":
            if self.soft_extracts is None:
                ref = self.embeddings.word_embeddings.weight
                layers = [SoftExtract(self.max_seq_len) for _ in range(self.num_layers)]
                self.soft_extracts = nn.ModuleList(layers).to(device=ref.device)
        else:
            self.soft_extracts = None
        self.mode = mode

    def clamp_soft_extracts_(self) -> None:
        """Clamp every ``r_j`` to ``[0, 1]`` (no-op outside soft mode)."""
        if self.soft_extracts is not None:
            for layer in self.soft_extracts:
                layer.clamp_()

    def soft_extract_masses(self) -> list[float]:
        """``[sum(r_1), ..., sum(r_n)]`` for :func:`~lit_efficiency.power_bert.retention.induce_retention`."""
        if self.soft_extracts is None:
            raise ConfigError("soft_extract_masses needs mode='soft'")
        return [float(layer.mass().detach()) for layer in self.soft_extracts]

    def optional_weight_prefixes(self) -> tuple[str, ...]:
        """Soft-Extract weights may be absent from a checkpoint (fresh ones start at 1), as may the pooler."""
        return (*super().optional_weight_prefixes(), "soft_extracts.")

    @override
    def layer_step(self, index: int, state: LayerState) -> LayerState:
        """One layer application in any mode: attention, [elimination], Add & LayerNorm, [Soft-Extract], FFN.

        Where the layer needs a significance score (soft mode, or a hard layer that drops tokens) it is computed
        block by block from ``Q`` and ``K`` (:func:`significance_score_qk`), never as all heads' ``(B, H, n, n)``
        probabilities. Where the layer drops tokens, :func:`extract` chooses them and only the kept query rows go
        on: fused SDPA over all keys, the output projection and the LayerNorm shrink to ``(B, keep, .)`` (LayerNorm
        is row-wise, so this equals "full sub-layer, then gather"). Probabilities are materialised only when
        ``output_attentions`` asks for them.
        """
        parts = self.layer_parts(index)
        hidden, mask, bias = state.hidden, state.mask, state.bias
        n = hidden.shape[1]
        keep = min(self.retention[index], n) if self.mode == "hard" else n
        soft = self.mode == "soft"
        q, k, v = self.project_qkv(parts, hidden)
        if state.attentions is not None:
            state.attentions.append(self.attention_probs(q, k, bias))
        sig = significance_score_qk(q, k, bias, mask, self.mask_padded_queries) if soft or keep < n else None
        residual = hidden
        if keep < n:
            kept = extract(hidden, mask, sig, keep)
            q = q.gather(2, kept.indices[:, None, :, None].expand(-1, q.shape[1], -1, q.shape[3]))
            residual = kept.hidden
            state.mask = kept.mask
            state.bias = additive_attention_mask(kept.mask, hidden.dtype)
            state.positions = state.positions.gather(1, kept.indices)
        out = self.attention_output(parts, self.sdpa(q, k, v, bias), residual)
        if soft:
            out = self.soft_extracts[index](out, sig, mask)
        state.hidden = self.feed_forward(parts, out)
        return state


#: Alias: the encoder *is* the base model (embeddings + layers + pooler), as HF's ``BertModel``.
PowerBertModel = PowerBertEncoder


# ---------------------------------------------------------------------- sequence classification
@dataclass
class PowerBertClassifierOutput:
    """What :class:`PowerBertForSequenceClassification` returns.

    Attributes:
        logits: ``(B, num_labels)`` (``num_labels == 1``: regression scores).
        encoder: the encoder's full output (kept tokens, their mask and positions, optional attentions).
    """

    logits: Tensor
    encoder: PowerBertOutput


class PowerBertForSequenceClassification(nn.Module):
    """PoWER-BERT encoder + the family's classification head, with HF ``*ForSequenceClassification`` keys.

    State-dict keys are those of ``BertForSequenceClassification`` (``bert.*``, ``classifier.*``),
    ``RobertaForSequenceClassification`` (``roberta.*``, ``classifier.dense.*``, ``classifier.out_proj.*``),
    ``AlbertForSequenceClassification`` or ``DistilBertForSequenceClassification`` (``distilbert.*``,
    ``pre_classifier.*``, ``classifier.*``), plus ``<prefix>.soft_extracts.{j}.r`` in soft mode. The head is the
    one HF puts on each family (:meth:`~lit_efficiency.power_bert.families.Family.head`).

    Args:
        config: a ``transformers`` BERT, RoBERTa, ALBERT or DistilBERT config (copied).
        num_labels: number of classes; 1 means regression (MSE). Default: ``config.num_labels``.
        mode: ``"none"``, ``"soft"`` or ``"hard"`` (see :class:`PowerBertEncoder`).
        retention: tokens kept per layer (a list of ints); required for ``"hard"``.
        max_seq_len: padded maximum length ``N``. Default: ``config.max_position_embeddings``.
        mask_padded_queries: exclude padded query rows from the significance score.
        label_names: class names in label-id order (saved as ``id2label``); default: the config's.
    """

    def __init__(
        self,
        config: PretrainedConfig,
        num_labels: int | None = None,
        mode: Mode = "none",
        retention: Sequence[int] | None = None,
        max_seq_len: int | None = None,
        mask_padded_queries: bool = False,
        label_names: Sequence[str] | None = None,
    ) -> None:
        super().__init__()
        config = copy.deepcopy(config)
        if num_labels is not None:
            if num_labels < 1:
                raise ConfigError(f"num_labels={num_labels}: must be >= 1 (1 means regression)")
            if num_labels != config.num_labels:
                config.num_labels = int(num_labels)  # HF resets id2label to LABEL_0, LABEL_1, ...
        if label_names:
            if len(label_names) != config.num_labels:
                raise ConfigError(f"label_names has {len(label_names)} names for {config.num_labels} labels")
            config.id2label = dict(enumerate(label_names))
            config.label2id = {name: i for i, name in enumerate(label_names)}
        check_config(config)
        family = family_of(config)
        encoder = PowerBertEncoder(
            config,
            mode=mode,
            retention=retention,
            max_seq_len=max_seq_len,
            mask_padded_queries=mask_padded_queries,
            add_pooling_layer=family.uses_pooler(),
        )
        self._prefix = encoder.base_model_prefix
        self.add_module(self._prefix, encoder)  # "bert", "roberta", ... as in HF task models
        family.build_head(self, encoder.config)
        self.reset_classifier()
        use_packed_linears(self)  # eager CPU inference: oneDNN on packed weights (cpu_linear); elsewhere F.linear

    @classmethod
    def from_config(cls, config: PretrainedConfig, **kwargs) -> PowerBertForSequenceClassification:
        """Randomly initialised model (``kwargs`` as the constructor's)."""
        return cls(config, **kwargs)

    @property
    def encoder(self) -> PowerBertEncoder:
        """The PoWER-BERT base model (also reachable as ``.bert``, ``.roberta``, ``.albert``, ``.distilbert``)."""
        return getattr(self, self._prefix)

    @property
    def config(self) -> PretrainedConfig:
        """The HF config (shared with the encoder)."""
        return self.encoder.config

    @property
    def num_labels(self) -> int:
        """Output width; 1 means regression."""
        return int(self.encoder.family.head_output_layer(self).out_features)

    def head_prefixes(self) -> tuple[str, ...]:
        """State-dict key prefixes of the classification head (everything but the encoder)."""
        return tuple(f"{name}." for name, _ in self.named_children() if name != self._prefix)

    @torch.no_grad()
    def reset_classifier(self) -> None:
        """Fresh head: ``N(0, initializer_range)`` weights, zero biases (HF's initialisation)."""
        for name, module in self.named_modules():
            if isinstance(module, nn.Linear) and not name.startswith(self._prefix + "."):
                module.weight.normal_(0.0, float(self.config.initializer_range))
                module.bias.zero_()

    def forward(
        self,
        input_ids: Tensor,
        attention_mask: Tensor | None = None,
        token_type_ids: Tensor | None = None,
        position_ids: Tensor | None = None,
        output_attentions: bool = False,
    ) -> PowerBertClassifierOutput:
        """Classify a batch (arguments as :meth:`PowerBertEncoder.forward`); logits are ``(B, num_labels)``."""
        out = self.encoder(
            input_ids,
            attention_mask=attention_mask,
            token_type_ids=token_type_ids,
            position_ids=position_ids,
            output_attentions=output_attentions,
        )
        family = self.encoder.family
        features = out.pooler_output if family.uses_pooler() else out.last_hidden_state[:, 0]
        logits = family.head(self, features)
        return PowerBertClassifierOutput(logits=logits, encoder=out)

    def compile_for_inference(
        self, mode: str | None = None, backend: str = "inductor", fullgraph: bool = True, keep_freed_memory: bool = True
    ):
        """Switch to eval mode and compile the forward in place with ``torch.compile`` for static shapes.

        A trained retention fixes every tensor shape of the forward for a given input shape, so the whole model
        compiles into one graph (``fullgraph=True``) without dynamic shapes; a new batch or sequence length
        recompiles once, for up to :data:`SHAPES_PER_PROCESS` shapes of all models compiled in the process.
        ``mode="reduce-overhead"`` also captures CUDA graphs on a GPU (replayed per shape), which removes the
        kernel-launch overhead that dominates a pruned forward in fp16.

        The compiled CPU graph allocates its large intermediates afresh on every call; under glibc, which gives
        such memory back to the OS when it is freed, each call would fault all of it in again (44% of the call at
        RTE's shapes). ``keep_freed_memory`` therefore tells glibc, process-wide, to keep freed memory for reuse
        (:func:`~lit_efficiency.core.memory.keep_freed_memory`; nothing happens off glibc).

        Args:
            mode: ``torch.compile`` mode (``None``/``"default"``, ``"reduce-overhead"``, ``"max-autotune"``).
            backend: ``torch.compile`` backend.
            fullgraph: fail on a graph break instead of silently splitting the forward.
            keep_freed_memory: set glibc to keep freed memory (pass ``False`` to leave the allocator alone).

        Returns:
            ``self``, for chaining.
        """
        if keep_freed_memory:
            memory.keep_freed_memory()
        self.eval()
        # One graph per input shape, and Dynamo counts them per code object, across every model compiled here: past
        # its default limit of 8, fullgraph=True turns the next shape into an error.
        dynamo_config = torch._dynamo.config
        dynamo_config.recompile_limit = max(dynamo_config.recompile_limit, SHAPES_PER_PROCESS)
        self.compile(mode=mode, backend=backend, fullgraph=fullgraph, dynamic=False)
        return self

    def loss(self, logits: Tensor, labels: Tensor) -> Tensor:
        """Task loss: mean-squared error when ``num_labels == 1`` (regression), else cross-entropy."""
        if self.num_labels == 1:
            return F.mse_loss(logits.squeeze(-1), labels.to(logits.dtype))
        return F.cross_entropy(logits, labels)

    # -------------------------------------------------------------- folders
    @classmethod
    def from_pretrained(
        cls,
        name_or_path: str | os.PathLike,
        num_labels: int | None = None,
        mode: Mode | None = None,
        retention: Sequence[int] | None = None,
        max_seq_len: int | None = None,
        mask_padded_queries: bool | None = None,
        label_names: Sequence[str] | None = None,
    ) -> PowerBertForSequenceClassification:
        """Load a base checkpoint (new classifier) or a saved fine-tuned folder (everything restored).

        Arguments left at ``None`` come from the folder's ``config.json`` (``num_labels``, ``retention``,
        ``power_bert``, ``id2label``); a saved retention makes the default mode ``"hard"``. The classification head
        is loaded when the checkpoint has all of it in the right shapes, otherwise freshly initialised. The model
        comes back in eval mode, as HF models do (call ``.train()`` to fine-tune; Lightning does).

        Raises:
            ConfigError: bad path / alias, unsupported model, missing encoder weights, invalid retention.
        """
        path = resolve_pretrained(str(name_or_path))
        config = load_hf_config(path)
        saved = getattr(config, "power_bert", None) or {}
        if retention is None:
            retention = getattr(config, "retention", None)
        if mode is None:
            mode = saved.get("mode") or ("hard" if retention is not None else "none")
        if max_seq_len is None:
            max_seq_len = saved.get("max_seq_len")
        if mask_padded_queries is None:
            mask_padded_queries = bool(saved.get("mask_padded_queries", False))
        model = cls(
            config,
            num_labels=num_labels,
            mode=mode,
            retention=retention,
            max_seq_len=max_seq_len,
            mask_padded_queries=mask_padded_queries,
            label_names=label_names,
        )
        state = read_hf_weights(path)
        model.encoder.load_hf_state_dict(state, source=str(name_or_path))
        own = {k: v for k, v in model.state_dict().items() if k.startswith(model.head_prefixes())}
        if all(k in state and tuple(state[k].shape) == tuple(v.shape) for k, v in own.items()):
            model.load_state_dict({k: state[k] for k in own}, strict=False)
        else:
            log.info("%s: no %d-label classifier in the checkpoint; initialised one", name_or_path, model.num_labels)
        return model.eval()

    def label_names(self) -> list[str]:
        """Class names in label-id order (``LABEL_0``, ... unless names were given); empty for regression."""
        return [] if self.num_labels == 1 else [self.config.id2label[i] for i in range(self.num_labels)]

    def save_pretrained(self, path: str | os.PathLike) -> Path:
        """Write a ``transformers``-native folder: ``config.json``, ``model.safetensors`` and a model card.

        The config has ``model_type`` :data:`~lit_efficiency.power_bert.autoload.MODEL_TYPE` (the base model's
        fields flat beside ``base_model_type``, ``num_labels``, ``id2label``, ``retention``, ``power_bert``), so
        ``AutoModelForSequenceClassification`` loads it as the eliminating model once ``lit_efficiency`` is
        imported (:mod:`lit_efficiency.power_bert.hf`) and refuses it otherwise.
        """
        from lit_efficiency.power_bert.hf import HFPowerBertForSequenceClassification, model_card

        enc = self.encoder
        config = copy.deepcopy(self.config)
        extra = {
            "model_type": MODEL_TYPE,
            "base_model_type": enc.model_type,
            "architectures": [HFPowerBertForSequenceClassification.__name__],
            "num_labels": self.num_labels,  # HF itself only writes id2label
            "retention": list(enc.retention) if enc.retention is not None else None,
            "power_bert": {
                "mode": enc.mode,
                "max_seq_len": enc.max_seq_len,
                "mask_padded_queries": enc.mask_padded_queries,
            },
        }
        folder = save_hf_folder(path, config, self.state_dict(), extra_config=extra)
        (folder / "README.md").write_text(model_card(self, self.label_names()))
        return folder


# ---------------------------------------------------------------------- cost model
def flops_per_example(config: PretrainedConfig, retention: Sequence[int] | None, seq_len: int) -> int:
    """Encoder FLOPs for one example of length ``seq_len`` (2 FLOPs per multiply-add).

    Counted: every linear layer of the encoder (Q, K, V, attention output, both FFN matrices; ALBERT's
    embedding-to-hidden projection) and the two attention matmuls (``Q K^T`` and ``P V``). Not counted:
    embeddings lookups, softmax, LayerNorm, activations, the significance score and the gathers (all linear in
    the token count and small), the pooler and the classifier (independent of elimination).

    With elimination, layer ``j`` reads ``n_{j-1}`` tokens and keeps ``n_j = min(l_j, n_{j-1})``: Q, K, V and
    ``Q K^T`` run on all ``n_{j-1}`` (every query row feeds the score), ``P V``, the output projection and the FFN
    only on the ``n_j`` kept rows, exactly as :class:`PowerBertEncoder` computes them.

    Args:
        config: HF config (BERT, RoBERTa, ALBERT or DistilBERT).
        retention: tokens kept per layer application, or ``None`` for the unpruned model.
        seq_len: input length ``L`` (the padded length the batch runs at).
    """
    layers = num_layer_applications(config)
    if retention is not None and len(retention) != layers:
        raise ConfigError(f"retention has {len(retention)} entries, the model has {layers} layers")
    d, inter = int(config.hidden_size), family_of(config).intermediate_size(config)
    n = int(seq_len)
    total = 0
    if config.model_type == "albert":
        total += 2 * n * int(config.embedding_size) * d
    for j in range(layers):
        kept = n if retention is None else min(int(retention[j]), n)
        total += 2 * n * d * 3 * d  # Q, K, V projections
        total += 2 * n * n * d  # Q K^T over all heads
        total += 2 * kept * n * d  # P V, kept rows
        total += 2 * kept * d * d  # attention output projection
        total += 2 * kept * d * inter * 2  # FFN up and down
        n = kept
    return total


def ideal_speedup(config: PretrainedConfig, retention: Sequence[int], seq_len: int) -> float:
    """FLOP-proportional speedup of ``retention`` over the unpruned encoder at length ``seq_len``."""
    return flops_per_example(config, None, seq_len) / flops_per_example(config, retention, seq_len)


__all__ = [
    "MODES",
    "Extracted",
    "PowerBertEncoder",
    "PowerBertForSequenceClassification",
    "PowerBertModel",
    "PowerBertOutput",
    "PowerBertClassifierOutput",
    "SoftExtract",
    "extract",
    "flops_per_example",
    "gather_tokens",
    "ideal_speedup",
    "mass_penalty",
    "select_tokens",
    "significance_score",
    "significance_score_qk",
]
