"""A user's data file: both formats, each kind of bad line refused with its line and field, the size limit,
the fingerprint, BOS windows, and held-out texts disjoint from the calibration ones."""

from __future__ import annotations

import hashlib
import json

import pytest

from mixprec.errors import InvalidArgument
from worker.quality.user_data import load_data, query_groups, split_data


def write(tmp_path, name: str, lines: list) -> str:
    path = tmp_path / name
    path.write_text("\n".join(json.dumps(x) if not isinstance(x, str) else x for x in lines) + "\n")
    return str(path)


def refused(path: str, decoder: bool, **kw) -> str:
    with pytest.raises(InvalidArgument) as caught:
        load_data(path, decoder, **kw)
    return str(caught.value)


def test_json_lines_for_a_decoder_take_text_or_prompt_and_completion(tmp_path):
    path = write(tmp_path, "d.jsonl", [{"text": "first text"}, "", {"prompt": "Q: two? ", "completion": "A: 2"}])
    data = load_data(path, decoder=True)
    assert [p.text for p in data.pairs] == ["first text", "Q: two? A: 2"]  # the blank line is skipped
    assert [p.source for p in data.pairs] == ["line 1", "line 3"]
    raw = (tmp_path / "d.jsonl").read_bytes()
    assert data.fingerprint == {"path": "d.jsonl", "format": "jsonl", "sha256": hashlib.sha256(raw).hexdigest(),
                                "bytes": len(raw), "records": 2}


def test_plain_text_is_one_text_a_line_for_a_decoder_and_tab_separated_pairs_for_an_embedder(tmp_path):
    decoder = load_data(write(tmp_path, "d.txt", ["one", "two"]), decoder=True)
    assert [p.text for p in decoder.pairs] == ["one", "two"] and decoder.fingerprint["format"] == "text"
    embedder = load_data(write(tmp_path, "e.txt", ["q1\td1\t1", "q2\td2"]), decoder=False)
    assert [(p.query, p.document, p.label) for p in embedder.pairs] == [("q1", "d1", 1.0), ("q2", "d2", None)]


@pytest.mark.parametrize("lines, decoder, named", [
    (["{\"text\": \"ok\"}", "{not json"], True, "--data line 2: is not JSON"),
    ([{"text": "ok"}, [1, 2]], True, "--data line 2: is a JSON list"),
    ([{"text": "ok"}, {"body": "x"}], True, "--data line 2: has fields ['body']"),
    ([{"text": "ok"}, {"text": 7}], True, "--data line 2 field 'text': 7 is not a non-empty string"),
    ([{"text": "ok"}, {"prompt": "p"}], True, "--data line 2 field 'completion': missing"),
    ([{"query": "q", "document": "d"}, {"query": "q"}], False, "--data line 2 field 'document': missing"),
    ([{"query": "q", "document": "d"}, {"query": "q", "document": "d", "label": "yes"}], False,
     "--data line 2 field 'label': 'yes' is not a finite number"),
    ([{"query": "q", "document": "d"}, {"query": "q", "document": "d", "label": True}], False,
     "--data line 2 field 'label'"),
])
def test_each_bad_json_line_is_refused_with_its_line_and_field(tmp_path, lines, decoder, named):
    assert named in refused(write(tmp_path, "bad.jsonl", lines), decoder)


def test_bad_plain_text_lines_and_files_are_refused_by_name(tmp_path):
    assert "--data line 2: has 1 tab-separated field(s)" in refused(write(tmp_path, "e.txt", ["q\td", "lonely"]), False)
    assert "--data line 1 label: 'x' is not a number" in refused(write(tmp_path, "e.txt", ["q\td\tx", "q\td"]), False)
    assert "has 1 record(s); at least 2" in refused(write(tmp_path, "one.txt", ["only"]), True)
    assert "cannot read" in refused(str(tmp_path / "missing.jsonl"), True)
    (tmp_path / "bin.txt").write_bytes(b"ok\n\xff\xfe\n")
    assert "is not UTF-8" in refused(str(tmp_path / "bin.txt"), True)


def test_a_file_over_the_size_limit_is_refused_before_it_is_read(tmp_path):
    path = write(tmp_path, "big.txt", ["x" * 100] * 20)
    assert "bytes; the limit is 1000 (--max-data-bytes)" in refused(path, True, max_bytes=1000)
    assert load_data(path, True, max_bytes=10_000).fingerprint["records"] == 20
    assert "--eval-data" in refused(path, True, max_bytes=1000, option="--eval-data")


def test_held_out_texts_and_query_groups_are_disjoint_from_the_calibration_ones(tmp_path):
    lines = [{"query": f"q{i // 3}", "document": f"d{i}", "label": i % 2} for i in range(24)]  # 8 queries x 3
    pairs = load_data(write(tmp_path, "e.jsonl", lines), decoder=False).pairs
    assert [len(g) for g in query_groups(pairs)] == [3] * 8
    calibration, held = split_data(pairs, 2)
    assert len(held) == 6 and len(calibration) == 18
    assert not {p.query for p in calibration} & {p.query for p in held}  # no ranking list is split
    texts = load_data(write(tmp_path, "d.txt", [f"text {i}" for i in range(10)]), decoder=True).pairs
    calibration, held = split_data(texts, 3)
    assert len(held) == 3 and not {p.text for p in calibration} & {p.text for p in held}
    assert split_data(texts, 0) == (texts, ())


def test_a_decoders_windows_of_user_text_open_with_bos_and_come_only_from_that_text(tmp_path):
    from worker.models.tiny import load_tiny_decoder
    from worker.quality.language import text_windows

    tokenizer = load_tiny_decoder(layers=1).decoder.tokenizer
    texts = load_data(write(tmp_path, "d.txt", ["abcdefgh" * 20] * 4), decoder=True).pairs
    windows = text_windows(tokenizer, 64, tokens=16, pairs=texts)
    assert windows.shape[1] == 16 and windows.shape[0] > 4  # long texts give several windows each
    if tokenizer.bos_token_id is not None:
        assert (windows[:, 0] == tokenizer.bos_token_id).all()
    body = set(tokenizer("\n\n".join(p.text for p in texts), add_special_tokens=False)["input_ids"])
    assert set(windows[:, 1:].flatten().tolist()) <= body
