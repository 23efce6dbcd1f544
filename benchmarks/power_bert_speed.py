"""PoWER-BERT inference speed at BERT-base shapes with random weights (no training): our unpruned encoder,
PoWER-BERT and ``transformers`` with SDPA, static and dynamic padding, interleaved (``power_bert/speed.py``).

Writes ``benchmarks/results/power_bert_speed_<device>.json``. The retention is the paper's RTE configuration scaled to
``--seq-len`` (153,125,...,5 of 256 for N = 256); inputs are random token ids with lengths drawn uniformly between a
quarter of N and N, so dynamic padding has something to remove.

Usage::

    python benchmarks/power_bert_speed.py --device cuda                       # BERT-base, batch 128 and 1
    python benchmarks/power_bert_speed.py --device cpu --layers 2 --hidden 256 --repeats 5   # quick CPU check
"""

from __future__ import annotations

import argparse
import datetime
import json
import tempfile
from pathlib import Path

import torch

from lit_efficiency.core.paths import atomic_write_text
from lit_efficiency.power_bert.model import PowerBertForSequenceClassification
from lit_efficiency.power_bert.speed import comparisons, format_rows, hf_sdpa_model, make_workloads, time_models

ROOT = Path(__file__).resolve().parents[1]
#: The paper's RTE retention at N = 256 (12 layers).
RTE_RETENTION = [153, 125, 111, 105, 85, 80, 72, 48, 35, 27, 22, 5]


def scaled_retention(layers: int, seq_len: int) -> list[int]:
    """The RTE configuration resampled to ``layers`` entries and scaled to ``seq_len`` (non-increasing, >= 1)."""
    picks = [RTE_RETENTION[round(j * (len(RTE_RETENTION) - 1) / max(1, layers - 1))] for j in range(layers)]
    return [max(1, round(k * seq_len / 256)) for k in picks]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--layers", type=int, default=12)
    parser.add_argument("--hidden", type=int, default=768)
    parser.add_argument("--seq-len", type=int, default=256)
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[128, 1])
    parser.add_argument("--examples", type=int, default=256, help="examples per timed call (batch 1: 32)")
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--results-dir", default=str(ROOT / "benchmarks" / "results"))
    args = parser.parse_args()
    from transformers import BertConfig

    device = torch.device(args.device)
    config = BertConfig(hidden_size=args.hidden, num_hidden_layers=args.layers, num_attention_heads=args.hidden // 64,
                        intermediate_size=4 * args.hidden, max_position_embeddings=max(512, args.seq_len))  # fmt: skip
    retention = scaled_retention(args.layers, args.seq_len)
    torch.manual_seed(0)
    baseline = PowerBertForSequenceClassification(config, num_labels=2, max_seq_len=args.seq_len).eval()
    with tempfile.TemporaryDirectory() as folder:
        baseline.save_pretrained(folder)
        pruned = PowerBertForSequenceClassification.from_pretrained(folder, mode="hard", retention=retention).eval()
        models = {"baseline": baseline, "power_bert": pruned, "hf_sdpa": hf_sdpa_model(folder)}
    gen = torch.Generator().manual_seed(1)
    result = {"device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
              "torch": torch.__version__, "cuda": torch.version.cuda,
              "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
              "shape": {"layers": args.layers, "hidden": args.hidden, "seq_len": args.seq_len},
              "retention": retention, "repeats": args.repeats, "warmup": args.warmup, "fp": "fp32",
              "machine_busy": device.type == "cpu", "batches": {}, "speedups": []}  # fmt: skip
    for batch_size in args.batch_sizes:
        count = args.examples if batch_size > 1 else 32
        lengths = torch.randint(args.seq_len // 4, args.seq_len + 1, (count,), generator=gen).tolist()
        features = [{"input_ids": [101, *torch.randint(1000, 20000, (n - 2,), generator=gen).tolist(), 102],
                     "token_type_ids": [0] * n} for n in lengths]  # fmt: skip
        workloads = make_workloads(features, batch_size, 0, args.seq_len)
        ms = time_models(models, workloads, device, args.warmup, args.repeats)
        flops = {f"{m}/{p}": w.flops(config, retention if m == "power_bert" else None)
                 for m in models for p, w in workloads.items()}  # fmt: skip
        result["batches"][f"batch_{batch_size}"] = ms
        result["speedups"] += comparisons(ms, flops, batch_size)
    name = "gpu" if device.type == "cuda" else "cpu"
    out = Path(args.results_dir) / f"power_bert_speed_{name}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out, json.dumps(result, indent=2) + "\n")
    print("\n".join(format_rows(result["speedups"])))


if __name__ == "__main__":
    main()
