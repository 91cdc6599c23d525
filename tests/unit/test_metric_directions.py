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
