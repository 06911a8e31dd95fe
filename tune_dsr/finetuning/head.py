"""The margin classifier over the training persons that fine-tuning trains EdgeFace through."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["CosFaceHead"]


class CosFaceHead(nn.Module):
    """CosFace (large-margin cosine loss): logits ``s · (cos θ_j − m·[j = y])`` over the classes.

    ``weight`` holds one row per training person. Start it at the persons' mean embeddings
    (`init_from`): a random head on a pretrained backbone sends large, arbitrary gradients into
    the features during the first steps, which is exactly what a short fine-tuning cannot afford.
    """

    def __init__(self, embedding_size: int, classes: int, scale: float, margin: float) -> None:
        super().__init__()
        self.scale, self.margin = scale, margin
        self.weight = nn.Parameter(torch.randn(classes, embedding_size) * 0.01)

    @torch.no_grad()
    def init_from(self, centres: Tensor) -> None:
        """Rows set to the (normalised) class centres [classes, D]."""
        self.weight.copy_(F.normalize(centres.float(), dim=1))

    def cosines(self, embeddings: Tensor) -> Tensor:
        return F.normalize(embeddings.float(), dim=1) @ F.normalize(self.weight, dim=1).T

    def forward(self, embeddings: Tensor, labels: Tensor) -> tuple[Tensor, Tensor]:
        """The mean loss and the plain cosines [B, classes] (for training accuracy)."""
        cosines = self.cosines(embeddings)
        margins = F.one_hot(labels, cosines.shape[1]).to(cosines.dtype) * self.margin
        return F.cross_entropy(self.scale * (cosines - margins), labels), cosines.detach()
