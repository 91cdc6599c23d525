"""Retrieval metrics against the labels, and agreement metrics against the base reference."""

from __future__ import annotations

import torch

TOP_K = 10


def ranks(queries: torch.Tensor, documents: torch.Tensor) -> torch.Tensor:
    """1-based rank of each query's own document (the one at its index) among all documents."""
    sims = queries @ documents.T
    own = sims.diagonal().unsqueeze(1)
    return (sims > own).sum(dim=1) + 1


def top_k(queries: torch.Tensor, documents: torch.Tensor, k: int = TOP_K) -> torch.Tensor:
    return (queries @ documents.T).topk(min(k, documents.shape[0]), dim=1).indices


def retrieval_metrics(queries: torch.Tensor, documents: torch.Tensor) -> dict[str, float]:
    r = ranks(queries, documents).double()
    return {"mrr": float((1.0 / r).mean()), "recall_at_1": float((r == 1).double().mean())}


def agreement_metrics(queries: torch.Tensor, documents: torch.Tensor, ref_queries: torch.Tensor,
                      ref_documents: torch.Tensor) -> dict[str, float]:
    """top10_agreement: mean share of each query's top-10 documents that the reference also ranks top-10.
    cosine_to_base: mean cosine between each embedding and its reference embedding."""
    ours, theirs = top_k(queries, documents), top_k(ref_queries, ref_documents)
    # A row's top-k indices are distinct, so the overlap is how many of ours appear among theirs (on the
    # device, read once).
    overlap = (ours.unsqueeze(2) == theirs.unsqueeze(1)).any(2).double().sum(1) / ours.shape[1]
    cosine = torch.cat([(queries * ref_queries).sum(-1), (documents * ref_documents).sum(-1)])
    top10, cosine = torch.stack([overlap.mean(), cosine.double().mean()]).tolist()
    return {"top10_agreement": top10, "cosine_to_base": cosine}
