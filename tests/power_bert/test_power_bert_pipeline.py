"""PoWER-BERT Lightning stages and the ``power-bert`` pipeline: metrics, schedule, mass penalty, clamp, hand-off,
end-to-end run through the CLI, resume, and one-line errors."""

import json
import math
from pathlib import Path

import pytest
import torch
import yaml

from lit_efficiency.cli import CONF_DIR, main
from lit_efficiency.core.errors import ConfigError
from lit_efficiency.core.paths import resolve_pretrained
from lit_efficiency.core.trainer import quiet_trainer
from lit_efficiency.power_bert.glue import GLUEDataModule
from lit_efficiency.power_bert.model import PowerBertForSequenceClassification
from lit_efficiency.power_bert.retention import load_retention
from lit_efficiency.power_bert.task import (
    PowerBertFinetune,
    PowerBertRetrain,
    PowerBertSearch,
    glue_metrics,
    linear_warmup_decay,
)

SMOKE = CONF_DIR / "power_bert" / "smoke.yaml"


@pytest.fixture(scope="module")
def tiny_model() -> str:
    return resolve_pretrained("tiny-random-bert")


def _batch(tiny_model, n=4, length=12, task="rte"):
    gen = torch.Generator().manual_seed(0)
    ids = torch.randint(1000, 2000, (n, length), generator=gen)
    ids[:, 0] = 101
    mask = torch.ones(n, length, dtype=torch.long)
    mask[0, 8:] = 0
    labels = torch.tensor([0, 1, 0, 1])[:n]
    return {"input_ids": ids, "attention_mask": mask, "token_type_ids": torch.zeros_like(ids), "labels": labels}


def test_glue_metrics_match_hand_computed_values():
    preds, target = torch.tensor([1, 1, 0, 0, 1, 0]), torch.tensor([1, 0, 0, 0, 1, 1])
    tp, tn, fp, fn = 2, 2, 1, 1
    mcc = (tp * tn - fp * fn) / math.sqrt((tp + fp) * (tp + fn) * (tn + fp) * (tn + fn))
    cola = glue_metrics("cola")(preds, target)
    assert cola["matthews_corrcoef"].item() == pytest.approx(mcc)
    mrpc = glue_metrics("mrpc")(preds, target)
    assert mrpc["f1"].item() == pytest.approx(2 * tp / (2 * tp + fp + fn))
    assert mrpc["accuracy"].item() == pytest.approx(4 / 6)
    assert set(glue_metrics("stsb").keys()) == {"spearman", "pearson"}


def test_linear_warmup_then_decay():
    f = linear_warmup_decay(warmup_steps=4, total_steps=12)
    assert [f(s) for s in range(4)] == pytest.approx([0.25, 0.5, 0.75, 1.0])
    assert f(8) == pytest.approx(0.5) and f(12) == 0.0 and f(20) == 0.0


def test_search_loss_is_task_loss_plus_weighted_mass(tiny_model):
    module = PowerBertSearch(model_name_or_path=tiny_model, task="rte", mass_lambda=0.01, max_seq_len=16)
    with torch.no_grad():
        for r in module.model.encoder.soft_extracts:
            r.r.fill_(0.5)
    module.eval()  # no dropout: both forward passes below must see the same network
    batch = _batch(tiny_model)
    loss = module.training_step(batch, 0)
    task_loss = module.task_loss(module(batch), batch["labels"])
    num_layers = len(module.model.encoder.soft_extracts)
    # sum_j j * sum_k r_j[k] with r = 0.5 everywhere and N = 16 positions, j = 1..num_layers
    penalty = sum(j * 0.5 * 16 for j in range(1, num_layers + 1))
    assert loss.item() == pytest.approx(task_loss.item() + 0.01 * penalty, rel=1e-5)


def test_search_clamps_retention_after_every_step(tiny_model, tmp_path):
    module = PowerBertSearch(
        model_name_or_path=tiny_model,
        task="rte",
        retention_lr=5.0,
        mass_lambda=1.0,
        max_seq_len=16,
        retention_file=str(tmp_path / "retention.json"),
    )
    data = torch.utils.data.DataLoader([_batch(tiny_model)] * 3, batch_size=None)
    trainer = quiet_trainer(max_steps=3, limit_val_batches=0)
    trainer.fit(module, train_dataloaders=data)
    values = torch.cat([r.r.detach() for r in module.model.encoder.soft_extracts])
    assert values.min().item() == 0.0 and values.max().item() <= 1.0  # an Adam step of ~5 went below 0: clamped
    saved = json.loads((tmp_path / "retention.json").read_text())
    assert saved["retention"] == module.retention()
    assert all(isinstance(x, int) and x >= 1 for x in saved["retention"])


def test_search_has_its_own_param_group(tiny_model):
    module = PowerBertSearch(model_name_or_path=tiny_model, task="cola", retention_lr=0.3, lr=1e-4)
    groups = module.parameter_groups()
    retention_params = {id(p) for p in module.model.encoder.soft_extracts.parameters()}
    assert {id(p) for p in groups[1]["params"]} == retention_params
    assert groups[1]["lr"] == 0.3 and groups[1]["weight_decay"] == 0.0
    assert groups[0]["lr"] == 1e-4 and not retention_params & {id(p) for p in groups[0]["params"]}


def test_stage_handoff_loads_previous_weights(tiny_model, tmp_path):
    finetuned = PowerBertFinetune(model_name_or_path=tiny_model, task="rte")
    with torch.no_grad():
        finetuned.model.classifier.weight.add_(1.0)  # something the base checkpoint does not have
    finetuned.save_pretrained(tmp_path / "ft")
    search = PowerBertSearch(model_name_or_path=str(tmp_path / "ft"), task="rte", max_seq_len=16)
    ref = finetuned.model.state_dict()
    for key, value in search.model.state_dict().items():
        if "soft_extracts" not in key:
            assert torch.equal(value, ref[key]), key
    with torch.no_grad():
        search.model.encoder.soft_extracts[0].r.fill_(0.25)
        search.model.encoder.layer_parts  # noqa: B018 (exists on the encoder)
    search.save_pretrained(tmp_path / "sr")
    retrain = PowerBertRetrain(model_name_or_path=str(tmp_path / "sr"), task="rte", retention=[8, 4], max_seq_len=16)
    sr_state = search.model.state_dict()
    for key, value in retrain.model.state_dict().items():
        assert torch.equal(value, sr_state[key]), key
    assert retrain.model.encoder.mode == "hard" and list(retrain.model.encoder.retention) == [8, 4]
    # from_pretrained gives eval mode (HF convention); a stage trains with dropout on (Lightning keeps module modes)
    assert all(m.training for stage in (finetuned, search, retrain) for m in stage.model.modules())


def test_retrain_rejects_bad_retention(tiny_model, tmp_path):
    bad = tmp_path / "retention.json"
    bad.write_text('{"retention": [4, 8]}')
    with pytest.raises(ConfigError, match="retention"):
        PowerBertRetrain(model_name_or_path=tiny_model, task="rte", retention=str(bad), max_seq_len=16)
    bad.write_text("{not json")
    with pytest.raises(ConfigError, match=str(bad.name)):
        PowerBertRetrain(model_name_or_path=tiny_model, task="rte", retention=str(bad), max_seq_len=16)
    with pytest.raises(ConfigError, match="retention"):
        PowerBertRetrain(model_name_or_path=tiny_model, task="rte")


@pytest.mark.parametrize("name", sorted(p.name for p in (CONF_DIR / "power_bert").glob("*.yaml")))
def test_pipeline_configs_parse(name, capsys):
    with pytest.raises(SystemExit) as exc:
        main(["power-bert", "--config", str(CONF_DIR / "power_bert" / name), "--output_dir", "x", "--print_config"])
    assert exc.value.code == 0
    cfg = yaml.safe_load(capsys.readouterr().out)
    own = yaml.safe_load((CONF_DIR / "power_bert" / name).read_text())
    assert cfg["task"] == own["task"] and cfg["model"] == own["model"]
    assert cfg["timing"]["batch_size"] == own.get("timing", {}).get("batch_size", 128)


def _run_cli(args, capsys):
    with pytest.raises(SystemExit) as exc:
        main(args)
    return exc.value.code, capsys.readouterr().err


def test_pipeline_bad_inputs_are_one_line_errors(tmp_path, capsys):
    code, err = _run_cli(["power-bert", "--config", str(SMOKE), "--output_dir", str(tmp_path / "a"), "--task", "nope"],
                         capsys)  # fmt: skip
    assert code == 2 and "unknown task 'nope'" in err and err.count("lit-efficiency: error:") == 1
    args = ["power-bert", "--config", str(SMOKE), "--output_dir", str(tmp_path / "b"), "--model", "./no/such/model"]
    code, err = _run_cli(args, capsys)
    assert code == 2 and "no/such/model" in err
    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "precious.txt").write_text("keep me")
    code, err = _run_cli(["power-bert", "--config", str(SMOKE), "--output_dir", str(busy)], capsys)
    assert code == 2 and "not empty" in err
    assert sorted(p.name for p in busy.iterdir()) == ["precious.txt"]
    code, err = _run_cli(
        ["power-bert", "--config", str(SMOKE), "--output_dir", str(tmp_path / "c"), "--trainer.devices", "2"], capsys
    )
    assert code == 2 and "one device" in err


@pytest.mark.slow
def test_pipeline_end_to_end_guard_and_resume(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    out = tmp_path / "run"
    # The tiny random model sits at the constant predictor: with the guard on, the run is refused and ships nothing.
    code, err = _run_cli(["power-bert", "--config", str(SMOKE), "--output_dir", "run", "--guard", "refuse"], capsys)
    last = err.strip().splitlines()[-1]  # the lines before it are transformers' weight-loading progress bar
    assert code == 2 and last.startswith("lit-efficiency: error: refusing to ship the rte model")
    assert "constant predictor" in last and err.count("lit-efficiency: error:") == 1
    assert not (out / "model").exists() and not (out / "report.json").exists()
    # smoke.yaml itself says guard: warn; the finished stages are reused and the model ships with warnings.
    main(["power-bert", "--config", str(SMOKE), "--output_dir", "run"])  # relative, as `make demo` passes it
    printed = capsys.readouterr().out
    assert "finetune: already done" in printed and "WARNING: held-out metric" in printed
    report = json.loads((out / "report.json").read_text())
    assert report["eval_padding"] == "static" and report["train_padding"] == "dynamic" and report["mask_padded_queries"]
    for key in ("task", "metric_name", "baseline_metric", "power_bert_metric", "retention", "baseline_ms",
                "power_bert_ms", "speedup", "dynamic_padding_ms", "speedup_vs_dynamic_padding", "ideal_speedup",
                "speedup_vs_hf_sdpa_dynamic", "batch_size", "max_seq_len", "heldout", "warnings"):  # fmt: skip
        assert key in report, key
    assert report["speedup"] == pytest.approx(report["baseline_ms"] / report["power_bert_ms"])
    assert any("constant predictor" in w for w in report["warnings"])
    # Spread for every candidate (3 models x 2 paddings) at both batch sizes, and 8 comparisons per batch size.
    for batch in ("batch_32", "batch_1"):
        stats = report["timing"][batch]["ms_per_batch"]
        assert len(stats) == 6 and all(s["repeats"] == 2 and s["q3_ms"] >= s["q1_ms"] for s in stats.values())
    assert len(report["speedups"]) == 16 and all("within_noise" in r and "flop_ideal" in r for r in report["speedups"])
    assert report["hf_sdpa_max_abs_logit_diff"] < 1e-4  # transformers SDPA runs the very same weights
    assert (out / "tradeoff.png").stat().st_size > 0 and (out / "retention.png").stat().st_size > 0
    retention = load_retention(out / "retention.json", num_layers=2, max_seq_len=256)
    assert report["retention"] == retention
    # The shipped model reloads in hard mode with its retention and a tokenizer beside it.
    shipped = PowerBertForSequenceClassification.from_pretrained(out / "model")
    assert shipped.encoder.mode == "hard" and list(shipped.encoder.retention) == retention
    assert (out / "model" / "tokenizer.json").is_file()
    # A refused rerun overwrites nothing.
    shipped_report = (out / "report.json").read_bytes()
    code, err = _run_cli(["power-bert", "--config", str(SMOKE), "--output_dir", "run", "--guard", "refuse"], capsys)
    assert code == 2 and (out / "report.json").read_bytes() == shipped_report
    # Interrupted retrain: finished stages are skipped, the interrupted one resumes from its last checkpoint.
    (out / "retrain" / "done.json").unlink()
    capsys.readouterr()
    main(["power-bert", "--config", str(SMOKE), "--output_dir", str(out)])
    printed = capsys.readouterr().out
    assert "finetune: already done" in printed and "search: already done" in printed
    assert "retrain: resuming from" in printed
    assert json.loads((out / "report.json").read_text())["retention"] == retention
    # A different task, or changed training settings, in the same directory is refused and changes nothing.
    before = (out / "pipeline.json").read_text()
    for change in (["--task", "cola"], ["--search.mass_lambda", "0.5"], ["--mask_padded_queries", "false"]):
        with pytest.raises(SystemExit):
            main(["power-bert", "--config", str(SMOKE), "--output_dir", str(out), *change])
    assert (out / "pipeline.json").read_text() == before
    capsys.readouterr()
    main(["power-bert", "--config", str(SMOKE), "--output_dir", str(out), "--timing.repeats", "3"])  # timing may change
    assert "retrain: already done" in capsys.readouterr().out


@pytest.mark.slow
def test_budget_mode_ships_the_fastest_candidate_within_budget(tmp_path, capsys):
    out = tmp_path / "budget"
    args = ["power-bert", "--config", str(SMOKE), "--output_dir", str(out), "--budget", "1.0",
            "--lambda_grid", "[0.5, 30.0]", "--timing.repeats", "3", "--timing.batch1_examples", "0"]  # fmt: skip
    main(args)
    report = json.loads((out / "report.json").read_text())
    candidates = report["candidates"]
    assert [c["name"] for c in candidates] == ["lambda_x0.5", "lambda_x30"]
    base_lambda = yaml.safe_load(SMOKE.read_text())["search"]["mass_lambda"]
    assert [c["mass_lambda"] for c in candidates] == pytest.approx([0.5 * base_lambda, 30 * base_lambda])
    for c in candidates:
        assert (out / "candidates" / c["name"] / "retrain" / "done.json").is_file()
        assert {"retention", "heldout_metric", "ms", "speedup", "ideal_speedup"} <= set(c)
    # Chosen by hand: within 1 point of the baseline's held-out metric, then the smallest median time.
    within = [c for c in candidates if report["heldout"]["baseline"] - c["heldout_metric"] <= 1.0]
    assert within, "the tiny model's candidates should all sit at the baseline's (constant) metric"
    assert report["chosen"] == min(within, key=lambda c: c["ms"])["name"]
    assert report["retention"] == next(c for c in candidates if c["name"] == report["chosen"])["retention"]
    assert "batch_1" not in report["timing"] and (out / "tradeoff.png").is_file()


def _imdb_folder(root: Path) -> Path:
    words = ["great", "awful", "film", "plot", "actor", "boring", "superb", "scene"]
    for split in ("train", "test"):
        for label, polarity in enumerate(("neg", "pos")):
            folder = root / "aclImdb" / split / polarity
            folder.mkdir(parents=True)
            for i in range(12):
                text = " ".join(words[(i * 3 + k + label) % len(words)] for k in range(20 + i))
                (folder / f"{i}_{7 * label + 1}.txt").write_text(text)
    return root / "aclImdb"


@pytest.mark.slow
def test_imdb_config_runs_on_an_imdb_folder_and_bad_data_blocks_nothing(tmp_path, capsys):
    imdb = _imdb_folder(tmp_path)
    out = tmp_path / "imdb_run"
    args = ["power-bert", "--config", str(CONF_DIR / "power_bert" / "imdb.yaml"), "--output_dir", str(out),
            "--model", "tiny-random-bert", "--data.max_seq_len", "64", "--finetune.epochs", "1",
            "--search.epochs", "1", "--retrain.epochs", "1", "--lambda_grid", "[1.0]", "--guard", "warn",
            "--timing.repeats", "2", "--timing.batch1_examples", "2", "--timing.batch_size", "8",
            "--trainer.accelerator", "cpu", "--trainer.enable_progress_bar", "false"]  # fmt: skip
    code, err = _run_cli([*args, "--data.imdb_dir", str(tmp_path / "missing")], capsys)
    assert code == 2 and err.count("lit-efficiency: error:") == 1 and "missing" in err
    assert not (out / "pipeline.json").exists()  # nothing recorded: the corrected rerun is not blocked
    main([*args, "--data.imdb_dir", str(imdb)])
    report = json.loads((out / "report.json").read_text())
    assert report["task"] == "imdb" and report["reported_split"] == "IMDB test"
    assert "test/accuracy" in report["all_metrics"]["power_bert"]
    assert json.loads((out / "pipeline.json").read_text())["data"]["imdb_dir"] == str(imdb)


def test_bad_options_are_refused_before_anything_is_written(tmp_path, capsys):
    for change, field in ((["--budget", "-1"], "budget"), (["--lambda_grid", "[0.0]"], "lambda_grid"),
                          (["--timing.repeats", "0"], "timing.repeats"), (["--retrain.patience", "0"], "patience"),
                          (["--data.heldout_fraction", "0.9"], "heldout_fraction")):  # fmt: skip
        out = tmp_path / field
        code, err = _run_cli(["power-bert", "--config", str(SMOKE), "--output_dir", str(out), *change], capsys)
        assert code == 2 and field in err and err.count("lit-efficiency: error:") == 1, (change, err)
        assert not out.exists()


@pytest.mark.slow
def test_stages_run_alone_through_fit_and_chain(tmp_path, monkeypatch, tiny_model):
    """finetune -> search -> retrain as three `lit-efficiency fit` runs, handing off through exported folders."""
    monkeypatch.chdir(tmp_path)
    stages = CONF_DIR / "power_bert" / "stages"
    common = [
        "--trainer.accelerator=cpu", "--trainer.max_steps=3", "--trainer.max_epochs=1", "--trainer.log_every_n_steps=1",
        "--data.init_args.task=rte", "--data.init_args.train_limit=48",  # task and N set once, on the data
        "--data.init_args.eval_limit=32", "--data.init_args.max_seq_len=32",
        "--data.init_args.tokenizer_name=tiny-random-bert",
    ]  # fmt: skip
    main(["fit", "--config", str(stages / "finetune.yaml"), *common,
          f"--model.init_args.model_name_or_path={tiny_model}", "--model.init_args.export_dir=ft"])  # fmt: skip
    metrics = next(Path("runs/csv").glob("version_*/metrics.csv")).read_text()
    assert "val/score" in metrics and "val/accuracy" in metrics and "train/loss" in metrics
    assert (tmp_path / "ft" / "model.safetensors").is_file() and (tmp_path / "ft" / "tokenizer.json").is_file()
    main(["fit", "--config", str(stages / "search.yaml"), *common, "--model.init_args.model_name_or_path=ft",
          "--model.init_args.retention_file=ret.json", "--model.init_args.export_dir=sr"])  # fmt: skip
    retention = load_retention(tmp_path / "ret.json", num_layers=2, max_seq_len=32)
    main(["fit", "--config", str(stages / "retrain.yaml"), *common, "--model.init_args.model_name_or_path=sr",
          "--model.init_args.retention=ret.json", "--model.init_args.export_dir=pb"])  # fmt: skip
    shipped = PowerBertForSequenceClassification.from_pretrained(tmp_path / "pb")
    assert shipped.encoder.mode == "hard" and list(shipped.encoder.retention) == retention
    # A second search must refuse the existing retention file before training, not after.
    with pytest.raises(SystemExit) as exc:
        main(["fit", "--config", str(stages / "search.yaml"), *common, "--model.init_args.model_name_or_path=ft",
              "--model.init_args.retention_file=ret.json"])  # fmt: skip
    assert exc.value.code == 2
    assert load_retention(tmp_path / "ret.json", num_layers=2, max_seq_len=32) == retention


def test_task_and_max_seq_len_are_linked_from_data(tiny_model):
    """`task` and `max_seq_len` are typed once, on the data; the CLI links them into the model."""
    from lit_efficiency.cli import LitEfficiencyCLI

    cli = LitEfficiencyCLI(
        args=["--config", str(CONF_DIR / "power_bert" / "stages" / "finetune.yaml"),
              f"--model.init_args.model_name_or_path={tiny_model}", "--data.init_args.tokenizer_name=tiny-random-bert",
              "--data.init_args.task=rte", "--data.init_args.max_seq_len=48", "--trainer.logger=false"],
        run=False,
    )  # fmt: skip
    assert (cli.model.task, cli.model.max_seq_len) == ("rte", 48)
    assert (cli.datamodule.task, cli.datamodule.max_seq_len) == ("rte", 48)


def test_linked_values_typed_differently_on_the_model_are_an_error(tiny_model, capsys):
    """The link would overwrite an explicit model value silently: a differing one is a one-line error instead."""
    base = ["validate", "--config", str(CONF_DIR / "power_bert" / "stages" / "finetune.yaml"),
            f"--model.init_args.model_name_or_path={tiny_model}", "--trainer.logger=false"]  # fmt: skip
    code, err = _run_cli([*base, "--model.init_args.task=cola", "--data.init_args.task=rte"], capsys)
    assert code == 2 and "model.init_args.task='cola' differs from data.init_args.task='rte'" in err
    assert len(err.strip().splitlines()) == 1


def test_linked_value_needs_a_data_module_that_has_it(tiny_model, capsys):
    code, err = _run_cli(
        ["validate", "--model", "lit_efficiency.power_bert.task.PowerBertFinetune",
         f"--model.init_args.model_name_or_path={tiny_model}", "--data", "tests.helpers.TinyRegressionData",
         "--trainer.logger=false"],
        capsys,
    )  # fmt: skip
    assert code == 2 and "data module (tests.helpers.TinyRegressionData) has no `task` argument" in err


def test_model_and_data_must_agree_without_the_cli(tiny_model):
    """Used from Python (no link), a model and a data module for different tasks fail at setup, in one line."""
    module = PowerBertFinetune(model_name_or_path=tiny_model, task="rte", max_seq_len=32)
    data = GLUEDataModule(task="cola", tokenizer_name="tiny-random-bert", max_seq_len=32, train_limit=8, eval_limit=8)
    trainer = quiet_trainer(max_steps=1)
    with pytest.raises(ConfigError, match="model task 'rte' != data task 'cola'"):
        trainer.fit(module, datamodule=data)
