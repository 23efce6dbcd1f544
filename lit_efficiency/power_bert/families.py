"""What differs between the BERT-family architectures the encoder runs: BERT, RoBERTa, ALBERT and DistilBERT.

:class:`~lit_efficiency.power_bert.bert.BertEncoder` owns one forward loop; a :class:`Family` tells it, for one HF
``model_type``, which ``transformers`` modules hold the weights (so ``state_dict()`` keys are exactly those of the
HF base model), how to embed the input, which modules make up one layer application (:class:`LayerParts`), how the
pooler works, and which sequence-classification head HF puts on top (keys of ``*ForSequenceClassification``).

The four layouts:

* BERT: ``embeddings``, ``encoder.layer.{i}``, ``pooler.dense``; head: dropout + ``classifier`` on the pooler.
* RoBERTa: BERT's layers; position ids count real (non-``pad_token_id``) tokens from ``pad_token_id + 1``; the
  head ``classifier.{dense,out_proj}`` reads the first token's hidden state (no pooler).
* ALBERT: factorised embeddings (``encoder.embedding_hidden_mapping_in``), shared layer groups, ``pooler``.
* DistilBERT: ``embeddings`` (no segments), ``transformer.layer.{i}`` (``q_lin``, ..., ``sa_layer_norm``,
  ``ffn.lin1``, ...), no pooler; head: ``pre_classifier`` + ReLU + dropout + ``classifier`` on the first token.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, NamedTuple

import torch
from torch import Tensor, nn

if TYPE_CHECKING:
    from transformers import PretrainedConfig


class LayerParts(NamedTuple):
    """The modules of one layer application, under architecture-neutral names (the families differ in keys)."""

    query: nn.Linear
    key: nn.Linear
    value: nn.Linear
    attn_output: nn.Linear
    attn_dropout: nn.Module  # dropout on the attention output projection (hidden dropout; Identity where HF has none)
    attn_norm: nn.LayerNorm
    ffn_in: nn.Linear
    activation: Callable[[Tensor], Tensor]
    ffn_out: nn.Linear
    ffn_dropout: nn.Module  # nn.Identity for ALBERT, which applies no dropout there (as HF does)
    ffn_norm: nn.LayerNorm


class Family:
    """BERT: the layout every other family adapts. Methods take the encoder (or task model) that owns the modules.

    Attributes:
        model_type: HF ``config.model_type``.
        prefix: attribute name of the base model in HF task models (``BertForSequenceClassification.bert``).
        base_class: HF base-model class name (written as ``architectures`` of a saved encoder).
        classifier_class: HF sequence-classification class name.
    """

    model_type = "bert"
    prefix = "bert"
    base_class = "BertModel"
    classifier_class = "BertForSequenceClassification"

    # ------------------------------------------------------------------ config
    def num_layers(self, config: PretrainedConfig) -> int:
        """Number of layer applications a forward pass runs."""
        return int(config.num_hidden_layers)

    def intermediate_size(self, config: PretrainedConfig) -> int:
        """Width of the feed-forward sub-layer."""
        return int(config.intermediate_size)

    def attention_dropout(self, config: PretrainedConfig) -> float:
        """Dropout probability on the attention probabilities."""
        return float(config.attention_probs_dropout_prob)

    def classifier_dropout(self, config: PretrainedConfig) -> float:
        """Dropout probability of the sequence-classification head."""
        p = config.classifier_dropout
        return float(p if p is not None else config.hidden_dropout_prob)

    # ------------------------------------------------------------------ encoder
    def build(self, encoder: nn.Module, config: PretrainedConfig, add_pooling_layer: bool) -> None:
        """Create the HF weight containers on ``encoder`` (``embeddings``, layers, ``pooler`` or ``None``)."""
        from transformers.models.bert import modeling_bert as m

        encoder.embeddings = m.BertEmbeddings(config)
        encoder.encoder = m.BertEncoder(config)
        encoder.pooler = m.BertPooler(config) if add_pooling_layer else None

    def layer_parts(self, encoder: nn.Module, index: int) -> LayerParts:
        """Modules of layer application ``index`` (0-based)."""
        layer = encoder.encoder.layer[index]
        att = layer.attention
        return LayerParts(
            att.self.query, att.self.key, att.self.value, att.output.dense, att.output.dropout, att.output.LayerNorm,
            layer.intermediate.dense, layer.intermediate.intermediate_act_fn, layer.output.dense, layer.output.dropout,
            layer.output.LayerNorm,
        )  # fmt: skip

    def default_position_ids(self, encoder: nn.Module, input_ids: Tensor) -> Tensor:
        """Position ids when the caller gives none: ``0 .. L-1``."""
        return torch.arange(input_ids.shape[1], device=input_ids.device)[None, :]

    def embed(self, encoder: nn.Module, input_ids: Tensor, token_type_ids: Tensor, position_ids: Tensor) -> Tensor:
        """Token + segment + position embeddings, LayerNorm, dropout: ``(B, L) -> (B, L, D)``."""
        emb = encoder.embeddings
        x = emb.word_embeddings(input_ids) + emb.token_type_embeddings(token_type_ids)
        return emb.dropout(emb.LayerNorm(x + emb.position_embeddings(position_ids)))

    def pool(self, encoder: nn.Module, hidden: Tensor) -> Tensor:
        """``tanh(W h[:, 0] + b)`` (only called when the encoder has a pooler)."""
        return torch.tanh(encoder.pooler.dense(hidden[:, 0]))

    # ------------------------------------------------------------------ sequence-classification head
    def uses_pooler(self) -> bool:
        """Whether the classification head reads the pooler output (else the first token's hidden state)."""
        return True

    def build_head(self, model: nn.Module, config: PretrainedConfig) -> None:
        """Create the head's modules on the task model, under HF's keys."""
        model.dropout = nn.Dropout(self.classifier_dropout(config))
        model.classifier = nn.Linear(config.hidden_size, config.num_labels)

    def head(self, model: nn.Module, features: Tensor) -> Tensor:
        """Logits from the pooler output (``(B, D) -> (B, num_labels)``)."""
        return model.classifier(model.dropout(features))

    def head_output_layer(self, model: nn.Module) -> nn.Linear:
        """The head's last linear layer (its ``out_features`` is the number of labels)."""
        return model.classifier


class RobertaFamily(Family):
    """RoBERTa: BERT layers, padding-aware position ids, a two-layer head on the first token."""

    model_type = "roberta"
    prefix = "roberta"
    base_class = "RobertaModel"
    classifier_class = "RobertaForSequenceClassification"

    def build(self, encoder: nn.Module, config: PretrainedConfig, add_pooling_layer: bool) -> None:
        from transformers.models.roberta import modeling_roberta as m

        encoder.embeddings = m.RobertaEmbeddings(config)
        encoder.encoder = m.RobertaEncoder(config)
        encoder.pooler = m.RobertaPooler(config) if add_pooling_layer else None

    def default_position_ids(self, encoder: nn.Module, input_ids: Tensor) -> Tensor:
        """``pad_token_id + 1, + 2, ...`` over real tokens, ``pad_token_id`` on padding (fairseq's numbering)."""
        pad = int(encoder.config.pad_token_id)
        real = input_ids.ne(pad).long()
        return torch.cumsum(real, dim=1) * real + pad

    def uses_pooler(self) -> bool:
        return False

    def build_head(self, model: nn.Module, config: PretrainedConfig) -> None:
        from transformers.models.roberta import modeling_roberta as m

        model.classifier = m.RobertaClassificationHead(config)  # dense, dropout, out_proj

    def head(self, model: nn.Module, features: Tensor) -> Tensor:
        head = model.classifier
        x = torch.tanh(head.dense(head.dropout(features)))
        return head.out_proj(head.dropout(x))

    def head_output_layer(self, model: nn.Module) -> nn.Linear:
        return model.classifier.out_proj


class AlbertFamily(Family):
    """ALBERT: factorised embeddings and layer groups shared across ``num_hidden_layers * inner_group_num`` steps."""

    model_type = "albert"
    prefix = "albert"
    base_class = "AlbertModel"
    classifier_class = "AlbertForSequenceClassification"

    def num_layers(self, config: PretrainedConfig) -> int:
        return int(config.num_hidden_layers) * int(config.inner_group_num)

    def classifier_dropout(self, config: PretrainedConfig) -> float:
        return float(config.classifier_dropout_prob)

    def build(self, encoder: nn.Module, config: PretrainedConfig, add_pooling_layer: bool) -> None:
        from transformers.models.albert import modeling_albert as m

        encoder.embeddings = m.AlbertEmbeddings(config)
        encoder.encoder = m.AlbertTransformer(config)
        # key: pooler.weight (ALBERT layout)
        encoder.pooler = nn.Linear(config.hidden_size, config.hidden_size) if add_pooling_layer else None

    def layer_parts(self, encoder: nn.Module, index: int) -> LayerParts:
        cfg = encoder.config
        outer, inner = divmod(index, cfg.inner_group_num)
        group = int(outer / (cfg.num_hidden_layers / cfg.num_hidden_groups))  # HF's formula, verbatim
        layer = encoder.encoder.albert_layer_groups[group].albert_layers[inner]
        att = layer.attention
        return LayerParts(
            att.query, att.key, att.value, att.dense, att.output_dropout, att.LayerNorm,
            layer.ffn, layer.activation, layer.ffn_output, nn.Identity(), layer.full_layer_layer_norm,
        )  # fmt: skip

    def embed(self, encoder: nn.Module, input_ids: Tensor, token_type_ids: Tensor, position_ids: Tensor) -> Tensor:
        x = super().embed(encoder, input_ids, token_type_ids, position_ids)
        return encoder.encoder.embedding_hidden_mapping_in(x)

    def pool(self, encoder: nn.Module, hidden: Tensor) -> Tensor:
        return torch.tanh(encoder.pooler(hidden[:, 0]))


class DistilBertFamily(Family):
    """DistilBERT: no segment embeddings, no pooler, ``pre_classifier`` + ReLU head on the first token."""

    model_type = "distilbert"
    prefix = "distilbert"
    base_class = "DistilBertModel"
    classifier_class = "DistilBertForSequenceClassification"

    def intermediate_size(self, config: PretrainedConfig) -> int:
        return int(config.hidden_dim)

    def attention_dropout(self, config: PretrainedConfig) -> float:
        return float(config.attention_dropout)

    def classifier_dropout(self, config: PretrainedConfig) -> float:
        return float(config.seq_classif_dropout)

    def build(self, encoder: nn.Module, config: PretrainedConfig, add_pooling_layer: bool) -> None:
        from transformers.models.distilbert import modeling_distilbert as m

        encoder.embeddings = m.Embeddings(config)
        encoder.transformer = m.Transformer(config)
        encoder.pooler = None  # DistilBERT has none

    def layer_parts(self, encoder: nn.Module, index: int) -> LayerParts:
        layer = encoder.transformer.layer[index]
        att, ffn = layer.attention, layer.ffn
        return LayerParts(
            att.q_lin, att.k_lin, att.v_lin, att.out_lin, nn.Identity(), layer.sa_layer_norm,
            ffn.lin1, ffn.activation, ffn.lin2, ffn.dropout, layer.output_layer_norm,
        )  # fmt: skip

    def embed(self, encoder: nn.Module, input_ids: Tensor, token_type_ids: Tensor, position_ids: Tensor) -> Tensor:
        emb = encoder.embeddings
        x = emb.word_embeddings(input_ids) + emb.position_embeddings(position_ids)
        return emb.dropout(emb.LayerNorm(x))

    def uses_pooler(self) -> bool:
        return False

    def build_head(self, model: nn.Module, config: PretrainedConfig) -> None:
        model.pre_classifier = nn.Linear(config.hidden_size, config.hidden_size)
        model.classifier = nn.Linear(config.hidden_size, config.num_labels)
        model.dropout = nn.Dropout(self.classifier_dropout(config))

    def head(self, model: nn.Module, features: Tensor) -> Tensor:
        return model.classifier(model.dropout(torch.relu(model.pre_classifier(features))))


#: ``model_type`` -> its family.
FAMILIES: dict[str, Family] = {f.model_type: f for f in (Family(), RobertaFamily(), AlbertFamily(), DistilBertFamily())}
