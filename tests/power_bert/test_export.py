"""Export: static-shape ONNX (onnxruntime == PyTorch) and torch.export programs, and the CLI command."""

from __future__ import annotations

import pytest
import torch

from lit_efficiency.cli import main as cli_main
from lit_efficiency.core.deprecation import LitEfficiencyDeprecationWarning
from lit_efficiency.power_bert.export import INPUT_NAMES, export_folder, onnx_session
from lit_efficiency.power_bert.model import PowerBertForSequenceClassification
from tests.power_bert.test_bert import padded_batch, tiny_bert_config
from tests.power_bert.test_bert_families import tiny_distilbert_config


def saved_model(folder, make_config=tiny_bert_config):
    torch.manual_seed(0)
    model = PowerBertForSequenceClassification(
        make_config(), num_labels=3, mode="hard", retention=[7, 4, 2], max_seq_len=9
    ).eval()
    model.save_pretrained(folder)
    return model


@pytest.mark.slow  # the torch.onnx exporter takes ~30 s on a busy 2-core machine
@pytest.mark.parametrize("make_config", [tiny_bert_config, tiny_distilbert_config], ids=["bert", "distilbert"])
def test_onnx_matches_pytorch_on_padded_inputs(tmp_path, make_config):
    pytest.importorskip("onnxruntime")
    pytest.importorskip("onnxscript")
    model = saved_model(tmp_path, make_config)
    path = export_folder(tmp_path, "onnx", batch_size=3, seq_len=None)
    assert path == tmp_path / "onnx" / "model_b3_l9.onnx"
    ids, mask, tt = padded_batch()  # padding at the end and in the middle, unlike the export's example inputs
    feeds = {name: t.numpy() for name, t in zip(INPUT_NAMES, (ids, mask, tt), strict=True)}
    got = torch.from_numpy(onnx_session(path, threads=1).run(["logits"], feeds)[0])
    with torch.no_grad():
        want = model(ids, mask, tt).logits
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)


@pytest.mark.slow  # torch.export traces the whole model: ~10 s
def test_torch_export_program_matches_pytorch_and_cli_refuses_overwrite(tmp_path, capsys):
    model = saved_model(tmp_path)
    cli_main(["power-bert", "export", str(tmp_path), "--format", "torch", "--batch_size", "3"])
    path = tmp_path / "export" / "model_b3_l9.pt2"
    assert f"wrote {path}" in capsys.readouterr().out
    program = torch.export.load(str(path))
    ids, mask, tt = padded_batch()
    with torch.no_grad():
        torch.testing.assert_close(program.module()(ids, mask, tt), model(ids, mask, tt).logits, atol=1e-6, rtol=0)
    before = path.read_bytes()
    with pytest.raises(SystemExit) as exit_info:
        cli_main(["power-bert", "export", str(tmp_path), "--format", "torch", "--batch_size", "3"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("lit-efficiency: error:") and "exists" in err[0]
    assert path.read_bytes() == before


def test_export_rejects_a_length_beyond_the_positions(tmp_path, capsys):
    saved_model(tmp_path)
    with pytest.raises(SystemExit) as exit_info:
        cli_main(["power-bert", "export", str(tmp_path), "--format", "torch", "--seq_len", "25"])
    assert exit_info.value.code == 2
    assert "max_position_embeddings=24" in capsys.readouterr().err
    assert not (tmp_path / "export").exists()


@pytest.mark.parametrize(
    ("options", "named"),
    [(["--format", "tf"], "format"), (["--batch_size", "0"], "batch_size"), (["--seq_len", "x"], "seq_len")],
)
def test_export_options_are_checked_by_the_parser_in_one_line(tmp_path, capsys, options, named):
    saved_model(tmp_path)
    with pytest.raises(SystemExit) as exit_info:
        cli_main(["power-bert", "export", str(tmp_path), *options])
    err = capsys.readouterr().err.strip().splitlines()
    assert exit_info.value.code == 2 and len(err) == 1
    assert err[0].startswith("lit-efficiency: error:") and named in err[0]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["README.md", "config.json", "model.safetensors"]


def test_export_is_a_jsonargparse_command_listed_in_help(tmp_path, capsys):
    """Underscored options and a YAML ``--config`` as elsewhere; the first release's hyphenated names still parse."""
    with pytest.raises(SystemExit) as exit_info:
        cli_main(["--help"])
    assert exit_info.value.code == 0 and "power-bert export --help" in capsys.readouterr().out
    with pytest.raises(SystemExit) as exit_info:
        cli_main(["power-bert", "export", "--help"])
    assert exit_info.value.code == 0 and "--batch_size" in capsys.readouterr().out
    saved_model(tmp_path)
    config = tmp_path / "export.yaml"
    config.write_text("format: torch\nseq_len: 25\n")
    with pytest.warns(LitEfficiencyDeprecationWarning, match="--batch_size"), pytest.raises(SystemExit) as exit_info:
        cli_main(["power-bert", "export", str(tmp_path), "--config", str(config), "--batch-size", "2"])
    assert exit_info.value.code == 2  # seq_len 25 from the YAML reached the model check
    assert "--seq_len 25 exceeds" in capsys.readouterr().err
