"""Normalized entropy of a prediction (paper eq. 1, after Teerapittayanon et al.).

ε(p) = −Σ pᵢ log pᵢ / log |L|, in [0, 1]: near 0 the exit is confident, near 1 it is guessing.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor


def normalized_entropy(logits: Tensor) -> Tensor:
    """ε for each row of ``logits`` (N, |L|), computed from log-probabilities.

    Working from ``log_softmax`` avoids ``0 · log 0`` (NaN) for one-hot or underflowing probabilities:
    p·log p is taken as p·logp with p = exp(logp), and terms where p underflows to 0 contribute 0.
    """
    if logits.ndim != 2 or logits.shape[1] < 2:
        raise ValueError(f"logits must be (N, classes ≥ 2), got shape {tuple(logits.shape)}")
    logp = torch.log_softmax(logits.to(torch.float64), dim=1)
    p = logp.exp()
    plogp = torch.where(p > 0, p * logp, torch.zeros_like(p))
    eps = -plogp.sum(dim=1) / math.log(logits.shape[1])
    return eps.clamp_(0.0, 1.0).to(torch.float32)
