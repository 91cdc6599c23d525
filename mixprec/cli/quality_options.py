"""`--data FILE`, `--metric NAME|package.module:function` and `--max-data-bytes`: shared by sweep, eval, worker."""

from __future__ import annotations

import math

from mixprec.errors import FieldError, InvalidArgument
from mixprec.metrics import MAX_DATA_BYTES as DEFAULT_MAX_BYTES
from mixprec.metrics import METRICS


def add_data_options(parser, data_option: str = "--data") -> None:
    parser.add_argument(data_option, metavar="FILE", default=None,
                        help="your evaluation data instead of the built-in docstrings: JSON Lines (.jsonl) or plain "
                        "text; decoders: {\"text\"} or {\"prompt\",\"completion\"} per line (plain text: one text a "
                        "line), cut into windows that open with BOS; embedders: {\"query\",\"document\"[,\"label\"]} "
                        "(plain text: query<TAB>document[<TAB>label]). Read here, never sent anywhere")
    parser.add_argument("--max-data-bytes", type=int, default=DEFAULT_MAX_BYTES, metavar="N",
                        help=f"refuse a {data_option} file larger than this (default {DEFAULT_MAX_BYTES})")


def user_metric_spec(text: str | None) -> str | None:
    """`text` when it names a user metric (package.module:function), None for a built-in one; anything else
    is refused by name."""
    if text is None or text in METRICS:
        return None
    if ":" in text:
        return text
    known = ", ".join(sorted(METRICS))
    raise InvalidArgument(FieldError("--metric", f"{text!r} is neither a built-in metric ({known}) nor "
                                     "package.module:function"))


def check_confidence(value: float) -> float:
    if math.isnan(value) or not 0 <= value < 1:
        raise InvalidArgument(FieldError("--confidence", f"must be in [0, 1), got {value}"))
    return value


def load_user_metrics(spec: str | None) -> tuple:
    """The user metric `spec` names, loaded (its directions declared), or none."""
    if spec is None:
        return ()
    from worker.quality.user_metrics import load_metric

    return (load_metric(spec),)


def load_data_file(path: str | None, decoder: bool, max_bytes: int, option: str = "--data"):
    """worker.quality.user_data.DataSet of `path`, or None for the built-in docstrings."""
    if path is None:
        return None
    from worker.quality.user_data import load_data

    return load_data(path, decoder, max_bytes, option)
