"""ResNet-18 (He et al. 2016) with GroupNorm in place of BatchNorm, the Diffusion Policy image backbone.

Chi et al. (2023) train the ResNet-18 from scratch and swap every BatchNorm for GroupNorm with one
group per 16 channels: BatchNorm's running statistics do not survive the exponential moving average
of weights the policy is evaluated with, GroupNorm has none. The classifier head (global average
pool + fc) is left out; the spatial softmax reads the final feature map instead.
"""

from __future__ import annotations

from torch import Tensor, nn

STAGE_BLOCKS = (2, 2, 2, 2)
CHANNELS_PER_GROUP = 16
# Five stride-2 steps (stem conv, max-pool, stages 2-4), each mapping a side of n pixels to ceil(n / 2).
DOWNSAMPLING = 32


def num_groups(channels: int) -> int:
    """GroupNorm groups for `channels`: one per 16 channels, at least one (for narrow CPU widths)."""
    return max(1, channels // CHANNELS_PER_GROUP)


def stage_channels(width: int) -> tuple[int, ...]:
    """Channels of the four stages, `(w, 2w, 4w, 8w)`, for stem width `w`."""
    return tuple(width * 2**i for i in range(len(STAGE_BLOCKS)))


def feature_map_shape(height: int, width: int) -> tuple[int, int]:
    """Spatial shape of the final feature map for `(height, width)` inputs: `(ceil(H / 32), ceil(W / 32))`."""
    return -(-height // DOWNSAMPLING), -(-width // DOWNSAMPLING)


def width_problem(width: int) -> str | None:
    """Why `width` cannot be a ResNet18GN stem width, or None when it can."""
    if width < 1:
        return f"backbone width={width} must be >= 1"
    for channels in stage_channels(width):
        if channels % num_groups(channels):
            return (f"backbone width={width} gives a stage of {channels} channels, not divisible into "
                    f"{num_groups(channels)} GroupNorm groups; use a power of two or a multiple of 16")
    return None


def group_norm(channels: int) -> nn.GroupNorm:
    return nn.GroupNorm(num_groups(channels), channels)


class BasicBlock(nn.Module):
    """Two 3x3 convolutions with a residual connection: `(N, C_in, H, W) -> (N, C_out, H/s, W/s)`.

    When the stride or the channel count changes, the shortcut is a strided 1x1 convolution + norm
    (He et al.'s option B).
    """

    def __init__(self, in_channels: int, out_channels: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=1, bias=False)
        self.norm1 = group_norm(out_channels)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1, bias=False)
        self.norm2 = group_norm(out_channels)
        self.relu = nn.ReLU(inplace=True)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or in_channels != out_channels:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_channels, out_channels, 1, stride=stride, bias=False), group_norm(out_channels)
            )

    def forward(self, x: Tensor) -> Tensor:
        out = self.relu(self.norm1(self.conv1(x)))
        out = self.norm2(self.conv2(out))
        return self.relu(out + self.shortcut(x))


class ResNet18GN(nn.Module):
    """ResNet-18 body with GroupNorm: `(N, C_in, H, W) -> (N, 8 * width, ceil(H / 32), ceil(W / 32))`.

    `width` is the stem's channel count (64 in the standard network, 11,176,512 parameters; smaller
    widths trade capacity for CPU time). The stem is a 7x7 stride-2 convolution and a 3x3 stride-2
    max-pool; stages two to four halve the resolution again.
    """

    def __init__(self, in_channels: int = 3, width: int = 64) -> None:
        super().__init__()
        problem = width_problem(width)
        if problem is not None:
            raise ValueError(problem)
        if in_channels < 1:
            raise ValueError(f"in_channels={in_channels} must be >= 1")
        self.out_channels = stage_channels(width)[-1]
        self.stem = nn.Sequential(
            nn.Conv2d(in_channels, width, 7, stride=2, padding=3, bias=False),
            group_norm(width),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(3, stride=2, padding=1),
        )
        stages, channels = [], width
        for i, (out_channels, blocks) in enumerate(zip(stage_channels(width), STAGE_BLOCKS)):
            stride = 1 if i == 0 else 2
            stages += [BasicBlock(channels, out_channels, stride)]
            stages += [BasicBlock(out_channels, out_channels) for _ in range(blocks - 1)]
            channels = out_channels
        self.stages = nn.Sequential(*stages)
        self._init_weights()

    def _init_weights(self) -> None:
        # He et al. (2015) initialisation keeps activations' scale through the ReLUs. The last norm of
        # each residual branch keeps its unit scale (no "zero-init residual"), as in the network
        # Diffusion Policy trained; every weight then gets a gradient from the first step.
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x: Tensor) -> Tensor:
        return self.stages(self.stem(x))
