"""Knowledge distillation (Hinton et al. 2015, arXiv:1503.02531; He et al. 2019, Eq. 6)."""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from pydantic import Field

from bench.strict import Strict


class DistillConfig(Strict):
    teacher: str                                            # a name from the recipe's `teachers:`
    temperature: float = Field(20.0, gt=0.0)                # T
    hard_weight: Optional[float] = Field(None, ge=0.0, le=1.0)  # None: paper; w: GluonCV (w = 0.5)


def soft_cross_entropy(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """ℓ(p, softmax(z)) = −Σ_i p_i log softmax(z)_i, averaged over the batch.

    Args:
        logits: (N, K) raw scores z.
        targets: (N, K) target distribution p (rows sum to 1).
    """
    return -(targets * F.log_softmax(logits.float(), dim=1)).sum(dim=1).mean()


def distill_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """Soft term of Eq. 6: T²·ℓ(softmax(r/T), softmax(z/T)), averaged over the batch.

    The T² factor keeps the soft term's gradient on the scale of the hard term's
    (Hinton et al., Section 2). Note this is a cross-entropy, not a KL divergence: the two
    differ by the teacher's entropy, which has no gradient with respect to the student.

    Args:
        student_logits: (N, K) z.
        teacher_logits: (N, K) r, computed without gradient.
        temperature: T > 0.
    """
    soft_targets = F.softmax(teacher_logits.float() / temperature, dim=1)
    return temperature**2 * soft_cross_entropy(student_logits / temperature, soft_targets)


def soft_target_entropy(teacher_logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """T²·H(softmax(r/T)), averaged over the batch: by how much `distill_loss` (a cross-entropy)
    exceeds T²·KL(softmax(r/T) ‖ softmax(z/T)). It does not depend on the student; at T = 20 the
    soft targets are near uniform, so it is close to T²·log K (≈ 920 for K = 10).

    Args:
        teacher_logits: (N, K) r.
        temperature: T > 0.
    """
    return distill_loss(teacher_logits, teacher_logits, temperature)


def combine_distill(hard: torch.Tensor, soft: torch.Tensor, hard_weight: Optional[float]) -> torch.Tensor:
    """Paper (Eq. 6): hard + soft. GluonCV: w·hard + (1 − w)·soft with w = `hard_weight`."""
    if hard_weight is None:
        return hard + soft
    return hard_weight * hard + (1 - hard_weight) * soft
