"""The `mixprec` CLI against a real control plane: output, exit codes, messages, nothing written on error."""

from __future__ import annotations

import json

import pytest
from support import ALIAS_BOMB, snapshot

from mixprec.cli.main import build_parser, main

LAYERS = [f"layers.{i}.{g}" for i in range(2) for g in ("attention.q_proj", "mlp.up_proj", "mlp.down_proj")]


@pytest.fixture
def files(tmp_path):
    def write(name: str, text: str) -> str:
        path = tmp_path / name
        path.write_text(text)
        return str(path)

    return {
        "layers": write("layers.txt", "# MiniLM-ish\n" + "\n".join(LAYERS) + "\n"),
        "dup_layers": write("dup.txt", "a.b\na.b\n"),
        "empty_layers": write("empty.txt", "\n# nothing\n"),
        "mlp": write("mlp.yaml", "rules:\n  - {match: 'layers.*.mlp.*', precision: fp8}\n"),
        "all": write("all.yaml", "rules:\n  - {match: '*', precision: fp8}\n"),
        "unmatched": write("unmatched.yaml", "rules:\n  - {match: 'layers.9.*', precision: fp8}\n"),
        "bad_precision": write("badp.yaml", "rules:\n  - {match: 'layers.*', precision: fp6}\n"),
        "not_yaml": write("broken.yaml", "rules: [\n"),
        "wrong_shape": write("shape.yaml", "rules:\n  - layers.*\n"),
        "kv": write("kv.yaml", "rules: []\nkv_cache: fp8\n"),
        "missing": str(tmp_path / "absent.yaml"),
        "deep": write("deep.yaml", "rules: " + "[" * 100_000 + "]" * 100_000 + "\n"),
        "alias_bomb": write("bomb.yaml", ALIAS_BOMB),
    }


@pytest.fixture
def cli(control_plane, capsys):
    def run(*argv: str) -> tuple[int, str, str]:
        code = main(["--server", control_plane.address, *argv])
        out, err = capsys.readouterr()
        return code, out, err

    return run


def test_a_day_of_work(cli, files):
    assert cli("endpoint", "create", "embedder", "--layers", files["layers"], "--model", "minilm")[0] == 0
    code, out, _ = cli("endpoint", "list")
    assert code == 0 and "embedder" in out and "minilm" in out
    code, out, _ = cli("endpoint", "show", "embedder", "--output", "json")
    assert json.loads(out)["layers"] == LAYERS
    assert cli("policy", "create", "embedder", "-f", files["mlp"], "--parent", "0", "-m", "mlp to fp8")[0] == 0
    assert cli("policy", "create", "embedder", "-f", files["all"], "--parent", "1", "--author", "bo")[0] == 0
    code, out, _ = cli("policy", "show", "embedder", "1", "--resolved")
    assert code == 0 and "layers.*.mlp.*" in out and "2 bf16, 4 fp8" in out
    code, out, _ = cli("--output", "json", "policy", "history", "embedder")
    history = json.loads(out)
    assert [(v["version"], v["parent_version"], v["author"]) for v in history][1] == (2, 1, "bo")
    code, out, _ = cli("policy", "diff", "embedder", "1", "2")
    assert code == 0 and "layers.0.attention.q_proj" in out and "2 layers change, 4 keep" in out
    code, out, _ = cli("policy", "validate", "embedder", "-f", files["mlp"])
    assert code == 0 and out.startswith("valid: 2 bf16, 4 fp8")


# (argv, exit code, words stderr must contain)
BAD_CLI = [
    (("endpoint", "create", "Bad_Name", "--layers", "{layers}"), 2, "name: 'Bad_Name' is not a lowercase DNS label"),
    (("endpoint", "create", "e2", "--layers", "{dup_layers}"), 2, "duplicate layer name 'a.b'"),
    (("endpoint", "create", "e2", "--layers", "{empty_layers}"), 2, "lists no layer names"),
    (("endpoint", "create", "e2", "--layers", "{missing}"), 2, "cannot read"),
    (("endpoint", "create", "e2", "--layers", "{layers}", "--base", "fp16"), 2, "unknown precision 'fp16'"),
    (("endpoint", "create", "embedder", "--layers", "{layers}"), 4, "already exists"),
    (("endpoint", "show", "nope"), 3, "'nope' does not exist"),
    (("policy", "create", "embedder", "-f", "{unmatched}", "--parent", "1"), 2, "'layers.9.*' matches no layer"),
    (("policy", "create", "embedder", "-f", "{bad_precision}", "--parent", "1"), 2, "unknown precision 'fp6'"),
    (("policy", "create", "embedder", "-f", "{not_yaml}", "--parent", "1"), 2, "not valid YAML"),
    (("policy", "create", "embedder", "-f", "{wrong_shape}", "--parent", "1"), 2, "rules[0]"),
    (("policy", "create", "embedder", "-f", "{kv}", "--parent", "1"), 2, "no kv_cache layer"),
    (("policy", "create", "embedder", "-f", "{missing}", "--parent", "1"), 2, "cannot read"),
    (("policy", "create", "embedder", "-f", "{deep}", "--parent", "1"), 2, "deep.yaml: nests deeper than the limit"),
    (("policy", "create", "embedder", "-f", "{alias_bomb}", "--parent", "1"), 2, "bomb.yaml: uses more aliases"),
    (("policy", "validate", "embedder", "-f", "{deep}"), 2, "nests deeper than the limit of 32 levels"),
    (("policy", "validate", "embedder", "-f", "{alias_bomb}"), 2, "uses more aliases (*name) than the limit of 16"),
    (("rollout", "plan", "embedder", "-f", "{alias_bomb}", "--stages", "mlp"), 2, "uses more aliases"),
    (("policy", "create", "embedder", "-f", "{mlp}", "--parent", "0"), 4, "latest is 1"),
    (("policy", "create", "nope", "-f", "{mlp}", "--parent", "0"), 3, "'nope' does not exist"),
    (("policy", "show", "embedder", "7"), 3, "no policy version 7"),
    (("policy", "diff", "embedder", "1", "3"), 3, "no policy version 3"),
    (("policy", "validate", "embedder", "-f", "{unmatched}"), 2, "rules[0].match"),
    (("policy", "history", "nope"), 3, "'nope' does not exist"),
]


def test_bad_input_exits_with_its_code_and_message_and_writes_nothing(cli, files, db_url):
    assert cli("endpoint", "create", "embedder", "--layers", files["layers"])[0] == 0
    assert cli("policy", "create", "embedder", "-f", files["mlp"], "--parent", "0")[0] == 0
    before = snapshot(db_url)
    for argv, expected, words in BAD_CLI:
        code, _, err = cli(*(a.format(**files) for a in argv))
        assert code == expected, (argv, err)
        assert words in err, (argv, err)
    assert snapshot(db_url) == before


def test_server_down_exits_5(capsys, unused_address):
    code = main(["--server", unused_address, "endpoint", "list"])
    assert code == 5
    assert f"cannot reach the control plane at {unused_address}" in capsys.readouterr().err


def test_server_address_from_environment(control_plane, capsys, monkeypatch):
    monkeypatch.setenv("MIXPREC_SERVER", control_plane.address)
    assert main(["endpoint", "list"]) == 0
    assert "(none)" in capsys.readouterr().out


def _leaf_parsers(parser):
    for action in parser._actions:
        if action.__class__.__name__ == "_SubParsersAction":
            for name, sub in action.choices.items():
                yield name, sub
                yield from ((f"{name} {n}", p) for n, p in _leaf_parsers(sub))


def test_every_command_explains_itself():
    parser = build_parser()
    assert "FP8/BF16" in parser.format_help()
    commands = dict(_leaf_parsers(parser))
    for expected in ("server", "migrate", "endpoint create", "endpoint list", "endpoint show", "policy create",
                     "policy show", "policy history", "policy diff", "policy validate"):
        assert expected in commands
    for name, sub in commands.items():
        assert sub.description and len(sub.description) > 15, f"`mixprec {name} --help` says nothing"
