"""A BERT-family encoder (BERT, RoBERTa, ALBERT, DistilBERT) that owns its forward loop and keeps HF weights.

The weights live in Hugging Face ``transformers`` modules (``BertEmbeddings``, ``BertLayer``, ``AlbertTransformer``,
...) used purely as parameter containers, so ``state_dict()`` keys are exactly those of ``BertModel`` /
``RobertaModel`` / ``AlbertModel`` / ``DistilBertModel`` (what differs per architecture is in
:mod:`lit_efficiency.power_bert.families`) and any such checkpoint (hub name, local HF folder, or the offline alias
``minilm-l6``) loads without conversion. The forward pass is written here: HF's attention ``forward`` signatures
changed several times across transformers 5.x, and PoWER-BERT (:mod:`lit_efficiency.power_bert.model`) needs to
act *between* the attention sub-layer and the feed-forward sub-layer, which HF's layers do not expose.

Everything is read from the HF config (number of layers, heads, sizes, activation, dropout, ALBERT's layer
groups and embedding projection); nothing is hard-coded.

Differences from HF: encoder only (no decoder, cross-attention or KV cache), absolute position embeddings only,
attention probabilities are computed (eager) only when asked for and otherwise with
:func:`torch.nn.functional.scaled_dot_product_attention`, and the output is a typed dataclass.

For ALBERT a "layer" here is one *application* of a shared layer: ``num_hidden_layers * inner_group_num`` of them
(see :func:`num_layer_applications`), each may have its own PoWER-BERT parameters even though weights are shared.
"""

from __future__ import annotations

import copy
import json
import logging
import math
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lit_efficiency.core.errors import ConfigError
from lit_efficiency.core.paths import resolve_pretrained
from lit_efficiency.power_bert.autoload import MODEL_TYPE
from lit_efficiency.power_bert.families import FAMILIES, Family, LayerParts

if TYPE_CHECKING:  # transformers is imported lazily (it costs seconds); only the type is needed here
    from transformers import PretrainedConfig

log = logging.getLogger(__name__)

SUPPORTED_MODEL_TYPES = tuple(FAMILIES)

WEIGHTS_NAME = "model.safetensors"
WEIGHTS_INDEX_NAME = "model.safetensors.index.json"
TORCH_WEIGHTS_NAME = "pytorch_model.bin"
CONFIG_NAME = "config.json"


@dataclass
class BertEncoderOutput:
    """What :class:`BertEncoder` (and :class:`~lit_efficiency.power_bert.model.PowerBertEncoder`) returns.

    Attributes:
        last_hidden_state: ``(B, L, D)`` hidden states after the last layer (``L`` tokens kept; the input length for
            a plain BERT).
        attention_mask: ``(B, L)`` mask of the returned tokens (1 real, 0 padding), same dtype as the input mask.
        pooler_output: ``(B, D)`` ``tanh(W h_[CLS] + b)``, or ``None`` when the model has no pooler.
        attentions: one ``(B, H, L_j, L_j)`` tensor of attention probabilities (softmax output, before dropout) per
            layer application (layer ``j``'s *input* tokens), or ``None`` unless ``output_attentions=True``.
        kept_positions: ``(B, L)`` original positions of the returned tokens, ascending (``0 .. L-1`` unless
            tokens were eliminated).
    """

    last_hidden_state: Tensor
    attention_mask: Tensor
    pooler_output: Tensor | None = None
    attentions: tuple[Tensor, ...] | None = None
    kept_positions: Tensor | None = None


@dataclass
class LayerState:
    """What flows from one layer application to the next inside :meth:`BertEncoder.forward`.

    Attributes:
        hidden: ``(B, L, D)`` hidden states.
        mask: ``(B, L)`` key mask of those tokens (1 real, 0 padding).
        bias: ``(B, 1, 1, L)`` additive attention bias of ``mask`` (:func:`additive_attention_mask`).
        positions: ``(B, L)`` original positions of the tokens.
        attentions: the probabilities collected so far, or ``None`` when not asked for.
    """

    hidden: Tensor
    mask: Tensor
    bias: Tensor
    positions: Tensor
    attentions: list[Tensor] | None


def _hf():
    """Import transformers lazily with a clear error (it is an optional, heavy dependency)."""
    try:
        import transformers
    except ModuleNotFoundError as err:  # pragma: no cover - transformers is a core dependency of the project
        raise ModuleNotFoundError("BERT models need `transformers`: pip install 'transformers>=4.40'") from err
    return transformers


def num_layer_applications(config: PretrainedConfig) -> int:
    """Number of transformer layers a forward pass runs (``num_hidden_layers * inner_group_num`` for ALBERT)."""
    return FAMILIES[config.model_type].num_layers(config)


def family_of(config: PretrainedConfig) -> Family:
    """The :class:`~lit_efficiency.power_bert.families.Family` of a config (after :func:`check_config`)."""
    return FAMILIES[config.model_type]


def check_config(config: PretrainedConfig) -> None:
    """Reject configs this encoder cannot run faithfully.

    Raises:
        ConfigError: unsupported ``model_type``, decoder configs, relative position embeddings, or a hidden size
            not divisible by the number of heads.
    """
    model_type = getattr(config, "model_type", None)
    if model_type not in SUPPORTED_MODEL_TYPES:
        raise ConfigError(f"model_type {model_type!r} is not supported (supported: {', '.join(SUPPORTED_MODEL_TYPES)})")
    if getattr(config, "is_decoder", False) or getattr(config, "add_cross_attention", False):
        raise ConfigError("config.is_decoder / add_cross_attention: only encoder (bidirectional) models are supported")
    pos = getattr(config, "position_embedding_type", "absolute")
    if pos not in (None, "absolute"):
        raise ConfigError(f"config.position_embedding_type={pos!r}: only 'absolute' position embeddings are supported")
    if config.hidden_size % config.num_attention_heads:
        raise ConfigError(
            f"config.hidden_size={config.hidden_size} is not divisible by "
            f"num_attention_heads={config.num_attention_heads}"
        )


def additive_attention_mask(mask: Tensor, dtype: torch.dtype) -> Tensor:
    """``(B, L)`` key mask (1 keep, 0 pad) -> ``(B, 1, 1, L)`` additive bias: 0 or the dtype's most negative value.

    A finite minimum (not ``-inf``) keeps a fully padded row finite instead of NaN, as HF does.
    """
    bias = torch.zeros(mask.shape, dtype=dtype, device=mask.device)
    bias = bias.masked_fill(mask == 0, torch.finfo(dtype).min)
    return bias[:, None, None, :]


class BertEncoder(nn.Module):
    """BERT-family encoder (embeddings, layers, optional pooler) with the HF base model's keys (``BertModel``, ...).

    Args:
        config: a ``transformers`` ``BertConfig``, ``RobertaConfig``, ``AlbertConfig`` or ``DistilBertConfig``
            (copied; never modified).
        add_pooling_layer: build the pooler (``tanh`` dense on [CLS]), as ``BertModel`` does by default (DistilBERT
            has none).

    Example::

        enc = BertEncoder.from_pretrained("minilm-l6")  # offline alias, or a hub name / local HF folder
        out = enc(input_ids, attention_mask, output_attentions=True)
        out.last_hidden_state  # (B, L, D); out.attentions[j]: (B, H, L, L)
    """

    def __init__(self, config: PretrainedConfig, add_pooling_layer: bool = True) -> None:
        super().__init__()
        check_config(config)
        config = copy.deepcopy(config)
        self.config = config
        self.model_type: str = config.model_type
        self.num_layers = num_layer_applications(config)
        self.num_heads = int(config.num_attention_heads)
        self.head_dim = config.hidden_size // self.num_heads
        self.family = family_of(config)
        self.attn_probs_dropout = self.family.attention_dropout(config)
        _hf()
        self.family.build(self, config, add_pooling_layer)
        self.reset_parameters()

    # ------------------------------------------------------------------ construction / weights
    @property
    def base_model_prefix(self) -> str:
        """Attribute name HF task models use for this base model (``"bert"``, ``"roberta"``, ...)."""
        return self.family.prefix

    @property
    def hidden_size(self) -> int:
        """Width ``D`` of the hidden states."""
        return int(self.config.hidden_size)

    @torch.no_grad()
    def reset_parameters(self) -> None:
        """HF's initialisation: ``N(0, initializer_range)`` weights, zero biases, unit LayerNorms, zero pad row."""
        std = float(self.config.initializer_range)
        for module in self.modules():
            if isinstance(module, nn.Linear):
                module.weight.normal_(0.0, std)
                if module.bias is not None:
                    module.bias.zero_()
            elif isinstance(module, nn.Embedding):
                module.weight.normal_(0.0, std)
                if module.padding_idx is not None:
                    module.weight[module.padding_idx].zero_()
            elif isinstance(module, nn.LayerNorm):
                module.weight.fill_(1.0)
                module.bias.zero_()

    @classmethod
    def from_config(cls, config: PretrainedConfig, **kwargs: Any) -> BertEncoder:
        """Randomly initialised encoder for ``config`` (``kwargs`` go to the constructor)."""
        return cls(config, **kwargs)

    @classmethod
    def from_pretrained(cls, name_or_path: str | os.PathLike, **kwargs: Any) -> BertEncoder:
        """Load a pretrained encoder: an alias (``minilm-l6``), a local HF folder, or a hub name.

        Weights of task heads in the checkpoint (``cls.*``, ``classifier.*``, ...) are ignored; a missing pooler is
        left randomly initialised; any other missing encoder weight is an error. Returns the model in eval mode.

        Raises:
            ConfigError: unknown alias / path, unsupported model type, or weights that do not fit the config.
        """
        path = resolve_pretrained(str(name_or_path))
        config = load_hf_config(path)
        model = cls(config, **kwargs)
        model.load_hf_state_dict(read_hf_weights(path), source=str(name_or_path))
        return model.eval()

    def load_hf_state_dict(
        self, state_dict: Mapping[str, Tensor], source: str = "state_dict", strict: bool = True
    ) -> list[str]:
        """Load HF weights, accepting ``BertModel`` keys, prefixed task-model keys and old ``gamma``/``beta`` names.

        Args:
            state_dict: keys as in an HF checkpoint.
            source: name of the checkpoint, used in error messages.
            strict: raise when a weight is missing, other than those under :meth:`optional_weight_prefixes`.

        Returns:
            The checkpoint keys that were not used (task heads, buffers such as ``position_ids``).

        Raises:
            ConfigError: missing encoder weights (when ``strict``) or a shape mismatch.
        """
        own = self.state_dict()
        mapped, unused = {}, []
        for key, value in state_dict.items():
            name = normalize_hf_key(key, self.base_model_prefix)
            if name in own:
                mapped[name] = value
            else:
                unused.append(key)
        missing = [k for k in own if k not in mapped]
        optional = self.optional_weight_prefixes()
        missing_optional = [k for k in missing if k.startswith(optional)]
        missing_other = [k for k in missing if not k.startswith(optional)]
        if missing_other and strict:
            shown = ", ".join(missing_other[:3]) + (" ..." if len(missing_other) > 3 else "")
            raise ConfigError(f"{source}: {len(missing_other)} encoder weights missing from the checkpoint ({shown})")
        for name, value in mapped.items():
            if tuple(value.shape) != tuple(own[name].shape):
                raise ConfigError(
                    f"{source}: weight {name} has shape {tuple(value.shape)}, the config needs {tuple(own[name].shape)}"
                )
        self.load_state_dict(mapped, strict=False)
        if missing_optional:
            log.info("%s lacks %s; kept as initialised", source, ", ".join(missing_optional))
        return unused

    def optional_weight_prefixes(self) -> tuple[str, ...]:
        """Key prefixes a checkpoint may lack (kept as initialised): the pooler (absent from some checkpoints)."""
        return ("pooler.",)

    def save_pretrained(self, path: str | os.PathLike) -> Path:
        """Write ``config.json`` and ``model.safetensors`` (HF layout; reloads with :meth:`from_pretrained` or HF)."""
        config = copy.deepcopy(self.config)
        config.architectures = [self.family.base_class]
        return save_hf_folder(path, config, self.state_dict())

    # ------------------------------------------------------------------ building blocks of the forward pass
    def layer_parts(self, index: int) -> LayerParts:
        """Modules of layer application ``index`` (0-based); for ALBERT they are shared between applications."""
        return self.family.layer_parts(self, index)

    def embed(
        self, input_ids: Tensor, token_type_ids: Tensor | None = None, position_ids: Tensor | None = None
    ) -> Tensor:
        """Token, position (and segment) embeddings, LayerNorm, dropout, ALBERT projection: ``(B, L) -> (B, L, D)``."""
        if position_ids is None:
            position_ids = self.family.default_position_ids(self, input_ids)
        if token_type_ids is None:
            token_type_ids = torch.zeros_like(input_ids)
        return self.family.embed(self, input_ids, token_type_ids, position_ids)

    def project_qkv(self, parts: LayerParts, hidden: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """``(B, L, D)`` -> query, key, value, each ``(B, H, L, D/H)``."""
        bsz, seq_len, _ = hidden.shape

        def heads(x: Tensor) -> Tensor:
            return x.view(bsz, seq_len, self.num_heads, self.head_dim).transpose(1, 2)

        return heads(parts.query(hidden)), heads(parts.key(hidden)), heads(parts.value(hidden))

    def attention_probs(self, query: Tensor, key: Tensor, bias: Tensor) -> Tensor:
        """Eager softmax attention probabilities (before dropout): ``(B, H, Lq, Lk)``."""
        scores = torch.matmul(query, key.transpose(-1, -2)) * (1.0 / math.sqrt(self.head_dim))
        return torch.softmax(scores + bias, dim=-1)

    def sdpa(self, query: Tensor, key: Tensor, value: Tensor, bias: Tensor) -> Tensor:
        """Fused attention without probabilities (FlashAttention / memory-efficient kernels where available)."""
        return F.scaled_dot_product_attention(
            query,
            key,
            value,
            attn_mask=bias,
            dropout_p=self.attn_probs_dropout if self.training else 0.0,
            scale=1.0 / math.sqrt(self.head_dim),
        )

    def attention_output(self, parts: LayerParts, context: Tensor, residual: Tensor) -> Tensor:
        """Merge heads, output projection, dropout, residual Add & LayerNorm: ``(B, H, L, d) -> (B, L, D)``."""
        bsz, _, seq_len, _ = context.shape
        context = context.transpose(1, 2).reshape(bsz, seq_len, self.hidden_size)
        return parts.attn_norm(parts.attn_dropout(parts.attn_output(context)) + residual)

    def feed_forward(self, parts: LayerParts, hidden: Tensor) -> Tensor:
        """Feed-forward sub-layer with its residual Add & LayerNorm: ``(B, L, D) -> (B, L, D)``."""
        out = parts.ffn_out(parts.activation(parts.ffn_in(hidden)))
        return parts.ffn_norm(parts.ffn_dropout(out) + hidden)

    def pool(self, hidden: Tensor) -> Tensor | None:
        """``tanh(W h[:, 0] + b)`` or ``None`` without a pooler."""
        return None if self.pooler is None else self.family.pool(self, hidden)

    @staticmethod
    def _default_mask(input_ids: Tensor, attention_mask: Tensor | None) -> Tensor:
        if attention_mask is None:
            return torch.ones_like(input_ids)
        if attention_mask.shape != input_ids.shape:
            raise ValueError(
                f"attention_mask has shape {tuple(attention_mask.shape)}, input_ids {tuple(input_ids.shape)}"
            )
        return attention_mask

    # ------------------------------------------------------------------ forward
    def forward(
        self,
        input_ids: Tensor,
        attention_mask: Tensor | None = None,
        token_type_ids: Tensor | None = None,
        position_ids: Tensor | None = None,
        output_attentions: bool = False,
    ) -> BertEncoderOutput:
        """Encode a batch.

        Args:
            input_ids: ``(B, L)`` token ids.
            attention_mask: ``(B, L)``, 1 for real tokens and 0 for padding (any padding side). Default: all ones.
            token_type_ids: ``(B, L)`` segment ids. Default: zeros.
            position_ids: ``(B, L)`` or ``(1, L)``. Default: ``0 .. L-1``.
            output_attentions: also return each layer's attention probabilities (eager attention in every layer).

        Returns:
            :class:`BertEncoderOutput`.
        """
        mask = self._default_mask(input_ids, attention_mask)
        hidden = self.embed(input_ids, token_type_ids, position_ids)
        bsz, seq_len, _ = hidden.shape
        state = LayerState(
            hidden=hidden,
            mask=mask,
            bias=additive_attention_mask(mask, hidden.dtype),
            positions=torch.arange(seq_len, device=hidden.device).expand(bsz, seq_len),
            attentions=[] if output_attentions else None,
        )
        for index in range(self.num_layers):
            state = self.layer_step(index, state)
        return BertEncoderOutput(
            last_hidden_state=state.hidden,
            attention_mask=state.mask,
            pooler_output=self.pool(state.hidden),
            attentions=tuple(state.attentions) if state.attentions is not None else None,
            kept_positions=state.positions,
        )

    def layer_step(self, index: int, state: LayerState) -> LayerState:
        """One layer application: attention sub-layer, then feed-forward sub-layer (subclasses act in between).

        The attention output always comes from fused SDPA; probabilities are computed (eagerly, for the output
        only) when they are asked for.
        """
        parts = self.layer_parts(index)
        q, k, v = self.project_qkv(parts, state.hidden)
        if state.attentions is not None:
            state.attentions.append(self.attention_probs(q, k, state.bias))
        context = self.sdpa(q, k, v, state.bias)
        state.hidden = self.feed_forward(parts, self.attention_output(parts, context, state.hidden))
        return state


# ---------------------------------------------------------------------- HF folders: config, weights, saving
def normalize_hf_key(key: str, prefix: str) -> str:
    """Map a checkpoint key to ``BertModel`` / ``AlbertModel`` naming.

    Strips the task-model prefix (``bert.`` / ``albert.``) and renames TF-era LayerNorm ``gamma``/``beta``.
    """
    if key.startswith(prefix + "."):
        key = key[len(prefix) + 1 :]
    if key.endswith("LayerNorm.gamma"):
        key = key[: -len("gamma")] + "weight"
    elif key.endswith("LayerNorm.beta"):
        key = key[: -len("beta")] + "bias"
    return key


def load_hf_config(path: str) -> PretrainedConfig:
    """``AutoConfig.from_pretrained`` with one-line :class:`ConfigError`\\ s (offline misses, bad folders).

    Raises:
        ConfigError: the config cannot be read, or its model type is not supported.
    """
    hf = _hf()
    try:
        config = hf.AutoConfig.from_pretrained(path)
    except (OSError, ValueError) as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ConfigError(f"cannot load the model config of {path!r}: {first}") from err
    if config.model_type == MODEL_TYPE:  # a saved PoWER-BERT folder (lit_efficiency.power_bert.hf)
        config = config.base_config()
    check_config(config)
    return config


def _hub_file(repo_id: str, filename: str) -> str | None:
    """Path of ``filename`` in hub repo ``repo_id`` (downloaded/cached), or ``None`` when the repo lacks it."""
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import EntryNotFoundError

    try:
        return hf_hub_download(repo_id, filename)
    except EntryNotFoundError:
        return None
    except Exception as err:  # offline, unknown repo, gated repo, network: all the same to the user
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ConfigError(f"cannot fetch {filename} of {repo_id!r} from the HF hub: {first}") from err


def read_hf_weights(path: str) -> dict[str, Tensor]:
    """Read all weights of an HF model: ``model.safetensors`` (single or sharded) or ``pytorch_model.bin``.

    Args:
        path: a local folder, or a hub name (files are fetched through ``huggingface_hub``'s cache).

    Raises:
        ConfigError: no weight file found.
    """
    from safetensors.torch import load_file

    folder = Path(path)
    local = folder.is_dir()

    def find(name: str) -> str | None:
        if local:
            return str(folder / name) if (folder / name).is_file() else None
        return _hub_file(path, name)

    single = find(WEIGHTS_NAME)
    if single is not None:
        return load_file(single)
    index = find(WEIGHTS_INDEX_NAME)
    if index is not None:
        with open(index) as fh:
            shards = sorted(set(json.load(fh)["weight_map"].values()))
        state: dict[str, Tensor] = {}
        for shard in shards:
            shard_path = find(shard)
            if shard_path is None:
                raise ConfigError(f"{path}: shard {shard} listed in {WEIGHTS_INDEX_NAME} is missing")
            state.update(load_file(shard_path))
        return state
    legacy = find(TORCH_WEIGHTS_NAME)
    if legacy is not None:
        return torch.load(legacy, map_location="cpu", weights_only=True)
    raise ConfigError(f"{path}: no {WEIGHTS_NAME}, {WEIGHTS_INDEX_NAME} or {TORCH_WEIGHTS_NAME} found")


def save_hf_folder(
    path: str | os.PathLike,
    config: PretrainedConfig,
    state_dict: Mapping[str, Tensor],
    extra_config: Mapping[str, Any] | None = None,
) -> Path:
    """Write ``config.json`` + ``model.safetensors`` into ``path`` (created if needed); return the folder.

    ``extra_config`` entries are written into ``config.json`` as well (HF ``AutoConfig`` reads them back as
    attributes, or as constructor arguments such as ``num_labels``).
    """
    from safetensors.torch import save_file

    folder = Path(path)
    folder.mkdir(parents=True, exist_ok=True)
    config.save_pretrained(folder)
    if extra_config:
        config_file = folder / CONFIG_NAME
        data = json.loads(config_file.read_text())
        data.update(extra_config)
        config_file.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")
    tensors = {k: v.detach().contiguous().cpu() for k, v in state_dict.items()}
    save_file(tensors, str(folder / WEIGHTS_NAME), metadata={"format": "pt"})
    return folder
