import pytest

from mixprec.errors import InvalidArgument
from mixprec.metrics import METRICS, Direction, limit_word, worsening


def test_a_drop_worsens_agreement_and_a_rise_worsens_kl():
    assert worsening("cosine_to_base", -0.002) == pytest.approx(0.002)
    assert worsening("cosine_to_base", +0.002) == pytest.approx(-0.002)
    assert worsening("kl_divergence", +0.01) == pytest.approx(0.01)
    assert worsening("perplexity", -0.5) == pytest.approx(-0.5)
    assert limit_word("top1_agreement") == "drop" and limit_word("kl_divergence") == "rise"


def test_every_metric_has_exactly_one_direction():
    assert all(isinstance(d, Direction) for d in METRICS.values())


def test_an_unknown_metric_is_refused_by_name():
    with pytest.raises(InvalidArgument, match="'bleu'"):
        worsening("bleu", 0.1)


def test_limits_go_to_the_worse_side_and_the_wrong_side_is_refused_by_name():
    from mixprec.metrics import limit_errors, split_by_direction

    assert split_by_direction({"kl_divergence": 0.02, "top1_agreement": 0.01, "perplexity": 0.5}) == (
        {"top1_agreement": 0.01}, {"kl_divergence": 0.02, "perplexity": 0.5})
    errors = limit_errors({"kl_divergence": 0.02, "cosine_to_base": 0.1}, "drop", "max_{word}[{metric}]")
    assert [e.field for e in errors] == ["max_drop[kl_divergence]"] and "must not rise" in errors[0].message
    assert limit_errors({"perplexity": 1.0, "custom_score": 1.0}, "rise", "x") == []
