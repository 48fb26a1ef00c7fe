"""Spatial softmax (Levine, Finn et al. 2016): a feature map read out as keypoint coordinates.

Each of `K` attention maps is turned into a probability distribution over pixels by a softmax, and
the keypoint is that distribution's expected (x, y) position. Unlike global average pooling this
keeps *where* things are, which is what a policy acting on the scene needs.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn


class SpatialSoftmax(nn.Module):
    """`(N, C, H, W) -> (N, 2K)`: K keypoints `[x_0, y_0, x_1, y_1, ...]`, each in [-1, 1].

    A 1x1 convolution maps the `C` channels to `K` maps. x runs from -1 (left column) to 1 (right
    column), y from -1 (top row) to 1 (bottom row).
    """

    def __init__(self, in_channels: int, num_keypoints: int) -> None:
        super().__init__()
        if in_channels < 1 or num_keypoints < 1:
            raise ValueError(f"in_channels={in_channels} and num_keypoints={num_keypoints} must be >= 1")
        self.num_keypoints = num_keypoints
        self.keypoint_maps = nn.Conv2d(in_channels, num_keypoints, kernel_size=1)

    def forward(self, features: Tensor) -> Tensor:
        n, _, height, width = features.shape
        maps = self.keypoint_maps(features).flatten(2)  # (N, K, H*W), row-major pixels
        attention = torch.softmax(maps, dim=-1)
        ys, xs = torch.meshgrid(
            torch.linspace(-1.0, 1.0, height, device=features.device),
            torch.linspace(-1.0, 1.0, width, device=features.device),
            indexing="ij",
        )
        grid = torch.stack([xs.flatten(), ys.flatten()], dim=-1)  # (H*W, 2)
        keypoints = attention @ grid  # (N, K, 2)
        return keypoints.reshape(n, 2 * self.num_keypoints)
