"""`mixprec sweep`, `eval` and the worker's shadow evaluation on a user's data file with a user's metric
module: the tiny random decoder and MiniLM, a few samples each; the data's fingerprint (never its text) in
the artifact; a bad file refused by line and field with nothing written."""

from __future__ import annotations

import hashlib
import json
import sys
import textwrap

import pytest

from mixprec import metrics as directions
from mixprec.cli.main import main

pytestmark = pytest.mark.slow  # real forward passes on 2 cores

METRICS_MODULE = '''
import torch
from mixprec.metrics import declares

@declares(target_nll="lower")
def target_nll(base_logits, candidate_logits, targets):
    logp = torch.log_softmax(candidate_logits, -1)
    return {"target_nll": float(-logp.gather(-1, targets.unsqueeze(-1)).mean())}

@declares(log_loss="lower")
def log_loss(base, candidate, labels):
    """The worked example: is the document relevant? p = sigmoid(8 (cosine - 0.5)) against the 0/1 label."""
    queries, documents = candidate
    p = torch.sigmoid(8 * (torch.nn.functional.cosine_similarity(queries, documents) - 0.5)).double()
    p = p.clamp(1e-6, 1 - 1e-6)
    y = labels.to(p.dtype)
    return {"log_loss": float(-(y * p.log() + (1 - y) * (1 - p).log()).mean())}
'''
SECRET = "zebra-quartz"  # a word of the user's data that must appear in nothing the CLI writes or sends


@pytest.fixture
def user(tmp_path, monkeypatch):
    (tmp_path / "cli_team_metrics.py").write_text(textwrap.dedent(METRICS_MODULE))
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "cli_team_metrics", raising=False)  # another test's module of the same name
    monkeypatch.setattr(directions, "DECLARED", {})
    texts = tmp_path / "texts.jsonl"
    texts.write_text("".join(json.dumps({"text": f"def f{i}(x):\n    '''Add {i} to x ({SECRET}), then log the "
                                                 f"call number {i} and return it.'''\n    return x + {i}\n"}) + "\n"
                             for i in range(24)))
    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text("".join(json.dumps({"query": f"how do I parse item {i}", "label": i % 2,
                                         "document": f"Parse item {i} from text; {SECRET} if it fails."}) + "\n"
                             for i in range(12)))
    return tmp_path


def test_a_decoder_sweep_on_user_texts_with_a_user_metric_records_the_fingerprint_not_the_data(user, capsys):
    out = user / "map.yaml"
    argv = ["sweep", "--model", "tiny-llama", "--data", str(user / "texts.jsonl"), "--metric",
            "cli_team_metrics:target_nll", "--max-rise", "0.05", "--samples", "8", "--granularity", "group", "--exact",
            "-o", str(out)]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    artifact = json.loads(out.with_suffix(".json").read_text())
    raw = (user / "texts.jsonl").read_bytes()
    assert artifact["data"] == {"path": "texts.jsonl", "format": "jsonl", "sha256": hashlib.sha256(raw).hexdigest(),
                                "bytes": len(raw), "records": 24}
    assert artifact["metric"] == "target_nll" and artifact["direction"] == "lower" and artifact["confidence"] == 0.95
    assert artifact["samples"] == 8 and artifact["holdout"]["pairs"] == 6 and artifact["holdout"]["items"] >= 8
    assert "target_nll" in artifact["holdout"]["deltas"] and "kl_divergence" in artifact["holdout"]["deltas"]
    assert SECRET not in out.with_suffix(".json").read_text() and SECRET not in out.read_text()
    assert "calibration rise (8 pairs or windows)" in printed and "data: texts.jsonl (jsonl, 24 records" in printed


def test_an_embedder_eval_on_labelled_pairs_gives_the_users_log_loss_with_its_bound(user, capsys):
    argv = ["--output", "json", "eval", "--model", "minilm", "--data", str(user / "pairs.jsonl"),
            "--metric", "cli_team_metrics:log_loss"]
    assert main(argv) == 0
    shown = json.loads(capsys.readouterr().out)
    assert shown["samples"] == 12 and shown["data"]["records"] == 12
    assert shown["reference"]["log_loss"] > 0 and "log_loss" in shown["deltas"]
    assert shown["bounds"]["log_loss"] is not None and shown["bounds"]["cosine_to_base"] is not None


def test_a_bad_line_or_metric_is_refused_by_name_and_nothing_is_written(user, capsys):
    (user / "bad.jsonl").write_text('{"text": "fine"}\n{"text": "fine too"}\n{"prompt": "no completion"}\n')
    out = user / "map.yaml"
    assert main(["sweep", "--model", "tiny-llama", "--data", str(user / "bad.jsonl"), "-o", str(out)]) == 2
    assert "--data line 3 field 'completion': missing" in capsys.readouterr().err
    assert main(["sweep", "--model", "tiny-llama", "--metric", "cli_team_metrics:nothing", "-o", str(out)]) == 2
    assert "has no function 'nothing'" in capsys.readouterr().err
    assert main(["eval", "--model", "tiny-llama", "--data", str(user / "texts.jsonl"), "--max-data-bytes", "100"]) == 2
    assert "the limit is 100 (--max-data-bytes)" in capsys.readouterr().err
    assert main(["sweep", "--model", "tiny-llama", "--confidence", "1", "-o", str(out)]) == 2
    assert not out.exists() and not out.with_suffix(".json").exists()


def test_the_workers_shadow_evaluation_on_user_data_reports_only_metrics(user):
    from worker.runtime import build_runtime

    runtime = build_runtime("tiny-llama", eval_samples=8, eval_data=str(user / "texts.jsonl"),
                            metric="cli_team_metrics:target_nll")
    metrics, deltas, samples = runtime.evaluate(dict.fromkeys(runtime.catalog, "fp8"))
    assert samples == 8 and "target_nll" in metrics and deltas["kl_divergence"] > 0
    # What the agent sends is these three: names and numbers, nothing of the text.
    assert all(isinstance(k, str) and isinstance(v, float) for k, v in {**metrics, **deltas}.items())
    assert SECRET not in json.dumps([metrics, deltas])
