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


def retrieval_items(queries: torch.Tensor, documents: torch.Tensor) -> dict[str, torch.Tensor]:
    """Each query's reciprocal rank and whether its own document came first (their means: MRR, recall@1)."""
    r = ranks(queries, documents).double()
    return {"mrr": 1.0 / r, "recall_at_1": (r == 1).double()}


def means(items: dict[str, torch.Tensor]) -> dict[str, float]:
    """Each metric's mean over its items, read from the device once."""
    names = list(items)
    return dict(zip(names, torch.stack([items[n].double().mean() for n in names]).tolist(), strict=True))


def agreement_items(queries: torch.Tensor, documents: torch.Tensor, ref_queries: torch.Tensor,
                    ref_documents: torch.Tensor) -> dict[str, torch.Tensor]:
    """Per pair: top10_agreement, the share of its query's top-10 documents that the reference also ranks
    top-10; cosine_to_base, the mean cosine of its query and its document to their reference embeddings."""
    ours, theirs = top_k(queries, documents), top_k(ref_queries, ref_documents)
    # A row's top-k indices are distinct, so the overlap is how many of ours appear among theirs.
    overlap = (ours.unsqueeze(2) == theirs.unsqueeze(1)).any(2).double().sum(1) / ours.shape[1]
    cosine = ((queries * ref_queries).sum(-1).double() + (documents * ref_documents).sum(-1).double()) / 2
    return {"top10_agreement": overlap, "cosine_to_base": cosine}

