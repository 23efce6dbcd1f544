"""PoWER-BERT as a native ``transformers`` model: its own ``model_type``, Auto-class registration, a model card.

A folder written by :meth:`~lit_efficiency.power_bert.model.PowerBertForSequenceClassification.save_pretrained`
has ``model_type`` :data:`~lit_efficiency.power_bert.autoload.MODEL_TYPE`; its ``config.json`` holds the base
model's fields (BERT, RoBERTa, ALBERT or DistilBERT) flat, plus ``base_model_type``, ``retention``, ``power_bert``
and the label names. After ``import lit_efficiency``, ``AutoConfig`` reads it as :class:`PowerBertConfig` and
``AutoModelForSequenceClassification.from_pretrained`` returns :class:`HFPowerBertForSequenceClassification` in
eval mode (no ``trust_remote_code``); without the import ``transformers`` refuses the unknown model type.

Example::

    import lit_efficiency  # registers the Auto classes
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    model = AutoModelForSequenceClassification.from_pretrained("runs/sst2/model")  # eliminates tokens
    logits = model(**AutoTokenizer.from_pretrained("runs/sst2/model")("a fine film", return_tensors="pt")).logits
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor
from transformers import (
    AutoConfig,
    AutoModelForSequenceClassification,
    PretrainedConfig,
    PreTrainedModel,
)
from transformers.modeling_outputs import SequenceClassifierOutput
from transformers.models.auto.configuration_auto import CONFIG_MAPPING

from lit_efficiency.power_bert.autoload import MODEL_TYPE

#: Fields of a :class:`PowerBertConfig` that are not the base model's.
OWN_FIELDS = ("model_type", "base_model_type", "architectures", "transformers_version", "auto_map")


class PowerBertConfig(PretrainedConfig):
    """Config of a saved PoWER-BERT model: the base model's fields plus the elimination settings.

    Args:
        base_model_type: ``model_type`` of the wrapped encoder (``"bert"``, ``"roberta"``, ``"albert"``,
            ``"distilbert"``).
        retention: tokens kept per layer application (``None`` before the search).
        power_bert: ``{"mode", "max_seq_len", "mask_padded_queries"}``.
        **kwargs: the base config's fields and the standard ones (``num_labels``, ``id2label``, ...).
    """

    model_type = MODEL_TYPE

    def __init__(
        self,
        base_model_type: str = "bert",
        retention: Sequence[int] | None = None,
        power_bert: dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.base_model_type = base_model_type
        self.retention = list(retention) if retention is not None else None
        self.power_bert = dict(power_bert or {})

    def base_config(self) -> PretrainedConfig:
        """The wrapped ``BertConfig`` / ``RobertaConfig`` / ... (``retention`` and ``power_bert`` ride along)."""
        fields = {k: v for k, v in self.to_dict().items() if k not in OWN_FIELDS}
        return CONFIG_MAPPING[self.base_model_type].from_dict(fields)


def base_config_of(config: PretrainedConfig) -> PretrainedConfig:
    """Unwrap a :class:`PowerBertConfig`; any other config is returned as it is."""
    return config.base_config() if isinstance(config, PowerBertConfig) else config


class HFPowerBertForSequenceClassification(PreTrainedModel):
    """``transformers`` face of :class:`~lit_efficiency.power_bert.model.PowerBertForSequenceClassification`.

    It holds the same modules under the same keys (``bert.*``, ``classifier.*``, ...) and runs the same forward
    (token elimination included); the output is HF's ``SequenceClassifierOutput``. ``from_pretrained`` returns
    the model in eval mode, as HF models are.

    Args:
        config: a :class:`PowerBertConfig`.
        engine: the model to wrap; built from ``config`` (random weights) when omitted.
    """

    config_class = PowerBertConfig
    base_model_prefix = "power_bert"
    main_input_name = "input_ids"
    _supports_sdpa = True

    def __init__(self, config: PowerBertConfig, engine: Any | None = None) -> None:
        super().__init__(config)
        if engine is None:
            from lit_efficiency.power_bert.model import PowerBertForSequenceClassification

            saved = config.power_bert
            engine = PowerBertForSequenceClassification(
                config.base_config(),
                num_labels=config.num_labels,
                mode=saved.get("mode") or ("hard" if config.retention is not None else "none"),
                retention=config.retention,
                max_seq_len=saved.get("max_seq_len"),
                mask_padded_queries=bool(saved.get("mask_padded_queries", False)),
            )
        for name, child in engine.named_children():
            self.add_module(name, child)  # same modules, same keys as the engine
        self.__dict__["engine"] = engine  # not a submodule: its children are registered above

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path: str | os.PathLike, *args: Any, **kwargs: Any):
        """Load a saved PoWER-BERT folder (local path or hub name) in eval mode.

        Only ``dtype`` / ``torch_dtype`` among HF's loading options is honoured; the weights are read by
        :meth:`~lit_efficiency.power_bert.model.PowerBertForSequenceClassification.from_pretrained`.
        """
        from lit_efficiency.power_bert.model import PowerBertForSequenceClassification

        engine = PowerBertForSequenceClassification.from_pretrained(pretrained_model_name_or_path)
        config = kwargs.get("config")
        if not isinstance(config, PowerBertConfig):
            config = AutoConfig.from_pretrained(pretrained_model_name_or_path)
        model = cls(config, engine=engine)
        dtype = kwargs.get("dtype", kwargs.get("torch_dtype"))
        if isinstance(dtype, torch.dtype):
            model.to(dtype)
        return model.eval()

    def save_pretrained(self, save_directory: str | os.PathLike, *args: Any, **kwargs: Any) -> Path:
        """Write the folder the way the engine does (config, weights, model card)."""
        return self.engine.save_pretrained(save_directory)

    def forward(
        self,
        input_ids: Tensor,
        attention_mask: Tensor | None = None,
        token_type_ids: Tensor | None = None,
        position_ids: Tensor | None = None,
        labels: Tensor | None = None,
        output_attentions: bool = False,
        **kwargs: Any,
    ) -> SequenceClassifierOutput:
        """Classify a batch; ``labels`` adds the loss (MSE for one label, else cross-entropy)."""
        out = self.engine(
            input_ids,
            attention_mask=attention_mask,
            token_type_ids=token_type_ids,
            position_ids=position_ids,
            output_attentions=output_attentions,
        )
        loss = self.engine.loss(out.logits, labels) if labels is not None else None
        return SequenceClassifierOutput(loss=loss, logits=out.logits, attentions=out.encoder.attentions)


_registered = False


def register() -> None:
    """Register :class:`PowerBertConfig` and the model with ``AutoConfig`` / ``AutoModelForSequenceClassification``."""
    global _registered
    if _registered:
        return
    AutoConfig.register(MODEL_TYPE, PowerBertConfig, exist_ok=True)
    AutoModelForSequenceClassification.register(PowerBertConfig, HFPowerBertForSequenceClassification, exist_ok=True)
    _registered = True


def model_card(engine: Any, label_names: Sequence[str]) -> str:
    """README.md for a saved folder: what the model is, its retention, and how to load it."""
    enc = engine.encoder
    labels = ", ".join(label_names) if label_names else "(regression: one score)"
    retention = ", ".join(str(n) for n in enc.retention) if enc.retention is not None else "none (no elimination)"
    return f"""---
library_name: lit_efficiency
pipeline_tag: text-classification
tags: [power-bert, {enc.model_type}, token-elimination]
---

# PoWER-BERT {enc.family.base_class.removesuffix("Model")} sequence classifier

A {enc.model_type} encoder with PoWER-BERT progressive word-vector elimination (Goyal et al., ICML 2020), saved by
`lit_efficiency`. Each layer keeps [CLS] and the tokens that receive the most attention and drops the rest, so
later layers run on fewer tokens.

- mode: `{enc.mode}`; tokens kept per layer: {retention} (padded length N = {enc.max_seq_len})
- labels: {labels}
- `model_type` `{MODEL_TYPE}` (base `{enc.model_type}`); weights under the keys of `{enc.family.classifier_class}`

## Loading

```python
import lit_efficiency  # registers the model with the transformers Auto classes
from transformers import AutoModelForSequenceClassification, AutoTokenizer

model = AutoModelForSequenceClassification.from_pretrained("<this folder>")  # eval mode, eliminates tokens
tokenizer = AutoTokenizer.from_pretrained("<this folder>")
```

Without `import lit_efficiency`, `transformers` refuses the folder (unknown model type `{MODEL_TYPE}`) rather
than loading a plain {enc.model_type} that would not eliminate tokens and would predict differently.
"""
