"""A user's metric module, importable from a temporary directory: loaded with its declared directions,
and every way it can be wrong refused with a clear error that names it."""

from __future__ import annotations

import sys
import textwrap

import pytest
import torch

from mixprec import metrics as directions
from mixprec.errors import InvalidArgument
from worker.quality.user_metrics import load_metric

MODULE = '''
import math
from mixprec.metrics import declares

@declares(share_up="higher", spread="lower")
def good(base, candidate, targets):
    return {"share_up": float((candidate > base).float().mean()), "spread": float((candidate - base).abs().max())}

@declares(boom_metric="lower")
def raises(base, candidate, targets):
    raise ZeroDivisionError("division by zero")

@declares(listy="lower")
def not_a_dict(base, candidate, targets):
    return [1.0]

@declares(nan_metric="lower")
def not_finite(base, candidate, targets):
    return {"nan_metric": math.nan}

@declares(named="lower")
def wrong_names(base, candidate, targets):
    return {"other": 1.0}

def undeclared(base, candidate, targets):
    return {"x": 1.0}

@declares(sideways="up")
def bad_direction(base, candidate, targets):
    return {"sideways": 1.0}

@declares(kl_divergence="lower")
def shadows_a_built_in(base, candidate, targets):
    return {"kl_divergence": 1.0}
'''


@pytest.fixture
def user_module(tmp_path, monkeypatch):
    (tmp_path / "team_metrics.py").write_text(textwrap.dedent(MODULE))
    (tmp_path / "broken_import.py").write_text("raise RuntimeError('no config found')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "team_metrics", raising=False)  # another test's module of the same name
    monkeypatch.setattr(directions, "DECLARED", {})  # each test declares afresh
    return "team_metrics"


def refused(spec: str) -> str:
    with pytest.raises(InvalidArgument) as caught:
        load_metric(spec)(torch.zeros(3), torch.ones(3), torch.zeros(3))
    return str(caught.value)


def test_a_good_metric_loads_and_its_directions_are_known_to_budgets(user_module):
    metric = load_metric(f"{user_module}:good")
    assert metric.names == ("share_up", "spread")
    assert metric(torch.zeros(3), torch.ones(3), None) == {"share_up": 1.0, "spread": 1.0}
    assert directions.limit_word("share_up") == "drop" and directions.limit_word("spread") == "rise"
    assert directions.worsening("spread", 0.5) == 0.5 and directions.worsening("share_up", 0.5) == -0.5


@pytest.mark.parametrize("spec, message", [
    ("team_metrics", "is not package.module:function"),
    ("team_metrics:good:extra", "is not package.module:function"),
    ("no_such_module_anywhere:fn", "cannot import 'no_such_module_anywhere'"),
    ("broken_import:fn", "importing 'broken_import' raised RuntimeError: no config found"),
    ("team_metrics:missing", "has no function 'missing'"),
    ("team_metrics:undeclared", "declares no direction"),
    ("team_metrics:bad_direction", "sideways='up'; the direction is 'higher' or 'lower'"),
    ("team_metrics:shadows_a_built_in", "'kl_divergence' is a built-in metric"),
    ("team_metrics:raises", "team_metrics:raises raised ZeroDivisionError: division by zero"),
    ("team_metrics:not_a_dict", "returned list; it must return a dict of listy to numbers"),
    ("team_metrics:not_finite", "returned nan_metric=nan; it must be a finite number"),
    ("team_metrics:wrong_names", "returned ['other']; it declares ['named']"),
])
def test_every_way_a_user_metric_is_wrong_is_a_clear_error_naming_it(user_module, spec, message):
    text = refused(spec)
    assert text.startswith("--metric: ") and message in text
    assert "Traceback" not in text


def test_the_cli_refuses_an_unknown_name_that_is_no_spec_before_loading_anything():
    from mixprec.cli.main import main

    assert main(["sweep", "--model", "tiny-llama", "--metric", "not_a_metric"]) == 2
