"""Bad decoder input is refused by name, with nothing half-loaded; a local Hugging Face directory loads."""

from __future__ import annotations

import json

import pytest
import torch

from mixprec.cli.main import main
from mixprec.errors import InvalidArgument
from worker.models import load_model
from worker.models.tiny import byte_tokenizer, tiny_module

pytestmark = pytest.mark.slow  # real forward passes and sweeps: tens of seconds on 2 cores


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("tiny-llama")
    tiny_module(layers=2).save_pretrained(path)
    byte_tokenizer().save_pretrained(path)
    return path


def test_a_local_causal_lm_directory_loads_with_the_canonical_catalog(tiny_dir):
    model = load_model(f"hf:{tiny_dir}")
    assert model.name == f"hf:{tiny_dir}" and len(model.catalog) == 16 and "layers.1.kv_cache" in model.catalog
    reference = tiny_module(layers=2)
    ids = torch.tensor([[3, 1, 4, 1, 5]])
    with torch.inference_mode():
        assert torch.equal(model.decoder.hidden(ids), reference.model(input_ids=ids).last_hidden_state)


@pytest.mark.parametrize("make, message", [
    (lambda d: d / "missing", "does not exist"),
    (lambda d: d, "no config.json"),
    (lambda d: (d / "config.json").write_text(json.dumps({"architectures": ["BertModel"]})) and d,
     "is not a supported causal LM"),
    (lambda d: (d / "notes.txt").write_text("x") and d / "notes.txt", "must be a .gguf"),
])
def test_paths_that_are_not_a_causal_lm_are_refused_by_name(tmp_path, make, message):
    path = make(tmp_path)
    with pytest.raises(InvalidArgument, match=message) as caught:
        load_model(f"hf:{path}")
    assert str(path) in str(caught.value) and "--model" in str(caught.value)


def test_a_gguf_of_another_architecture_is_refused_before_loading(tmp_path):
    from gguf import GGUFWriter

    path = tmp_path / "encoder.gguf"
    writer = GGUFWriter(str(path), "bert")
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    with pytest.raises(InvalidArgument, match="GGUF architecture 'bert' is not supported"):
        load_model(f"hf:{path}")


def test_the_cli_exits_2_naming_the_model_or_the_kv_cache(tmp_path, capsys):
    assert main(["catalog", "--model", f"hf:{tmp_path / 'nope'}"]) == 2
    assert "nope" in capsys.readouterr().err
    policy = tmp_path / "kv.yaml"
    policy.write_text("rules:\n  - {match: '*', precision: fp8}\nkv_cache: fp8\n")
    # a model without a KV cache: the kv_cache setting is refused by name before anything runs
    assert main(["eval", "--model", "toy_models:make_mlp", "--policy", str(policy)]) == 2
    assert "kv_cache" in capsys.readouterr().err
