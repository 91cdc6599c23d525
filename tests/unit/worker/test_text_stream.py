"""Streamed text: decoded a short window at a time, yet exactly the text of decoding all tokens at once
(multi-byte characters split across byte tokens, invalid UTF-8, merges), and cut before stop strings."""

from __future__ import annotations

import random

import pytest

from worker.models.tiny import byte_tokenizer
from worker.sampling import IncrementalText, TextStream


@pytest.fixture(scope="module")
def tokenizer():
    return byte_tokenizer()


def streamed(stream, tokens) -> str:
    return "".join(stream.push(t) for t in tokens) + stream.finish()


def counting(tokenizer):
    calls = []

    def decode(ids):
        calls.append(len(ids))
        return tokenizer.decode(ids, skip_special_tokens=True)

    return decode, calls


def test_random_bytes_stream_to_the_text_all_tokens_decode_to(tokenizer):
    rng = random.Random(23)
    for length in (1, 2, 3, 7, 40, 300):
        for _ in range(20):
            tokens = [rng.randrange(257) for _ in range(length)]  # 256 = <eos>, skipped in the text
            decode, _ = counting(tokenizer)
            assert streamed(IncrementalText(decode), tokens) == tokenizer.decode(tokens, skip_special_tokens=True)


def test_multi_byte_characters_come_out_whole_and_each_token_decodes_a_short_window(tokenizer):
    text = "naïve café, 3 € — 𝄞 clef, 日本語 " * 20
    tokens = tokenizer(text)["input_ids"]
    decode, calls = counting(tokenizer)
    stream = IncrementalText(decode)
    pieces = [stream.push(t) for t in tokens]
    assert "".join(pieces) + stream.finish() == text
    assert all("\ufffd" not in piece for piece in pieces)  # never half a character
    assert max(calls) <= 8 and sum(calls) <= 8 * len(tokens)  # linear: no re-decoding from the start


def test_text_stops_before_the_first_stop_string_even_across_tokens(tokenizer):
    tokens = tokenizer("def read(path):\n    return open(path).read()\n\nclass X:")["input_ids"]
    decode, _ = counting(tokenizer)
    stream = TextStream(decode, ("\n\n", "open("))
    given = []
    for token in tokens:
        given.append(stream.push(token))
        if stream.stopped:
            break
    assert "".join(given) == "def read(path):\n    return " and stream.stopped
    plain = TextStream(decode, ("never there",))
    assert streamed(plain, tokens) == tokenizer.decode(tokens) and not plain.stopped


def test_gemma_tokens_stream_to_their_whole_decoding():
    from worker.models.decoder import GEMMA_NAME, cache_dir

    folders = sorted(cache_dir().glob(f"{GEMMA_NAME}-*/tokenizer.json"))
    if not folders:
        pytest.skip("Gemma 3 270M has not been dequantized into the cache directory on this machine")
    from transformers import AutoTokenizer

    gemma = AutoTokenizer.from_pretrained(str(folders[0].parent), local_files_only=True)
    rng = random.Random(5)
    text = "  Hello,  wörld! 日本語 🎉🎉 def f(x):\n\treturn x ** 2  "
    ids = gemma(text, add_special_tokens=False)["input_ids"]
    samples = [ids] + [[rng.randrange(gemma.vocab_size) for _ in range(60)] for _ in range(5)]
    for tokens in samples:
        decode = lambda t: gemma.decode(t, skip_special_tokens=True)  # noqa: E731
        assert streamed(IncrementalText(decode), tokens) == gemma.decode(tokens, skip_special_tokens=True)
