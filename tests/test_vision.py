"""The vision encoder: crops, ResNet-18 with GroupNorm, spatial softmax, per-camera and multi-key encoders."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from diffusion_policy.models.crop import center_crop, random_crop
from diffusion_policy.models.resnet_gn import ResNet18GN
from diffusion_policy.models.spatial_softmax import SpatialSoftmax
from diffusion_policy.models.vision_encoder import ImageEncoder, MultiObsEncoder, VisionConfig

SMALL = dict(backbone_width=8, num_keypoints=4, feature_dim=8)


def n_params(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def coded_images(n: int, c: int, h: int, w: int) -> torch.Tensor:
    """Images whose every value is unique: value = ((n * C + c) * H + row) * W + col."""
    return torch.arange(n * c * h * w, dtype=torch.float64).reshape(n, c, h, w)


# ----------------------------------------------------------------------------------------- crops


def test_random_crop_is_a_sub_window_with_varying_offsets():
    images = coded_images(64, 3, 12, 10)
    out = random_crop(images, (7, 4), generator=torch.Generator().manual_seed(0))
    assert out.shape == (64, 3, 7, 4)
    offsets = set()
    for i in range(64):
        # The first value of channel 0 encodes where the window starts.
        top, left = divmod(int(out[i, 0, 0, 0]) - i * 3 * 12 * 10, 10)
        torch.testing.assert_close(out[i], images[i, :, top : top + 7, left : left + 4], rtol=0, atol=0)
        offsets.add((top, left))
    assert len(offsets) > 10
    assert {t for t, _ in offsets} == set(range(6)) and {lf for _, lf in offsets} == set(range(7))


def test_random_crop_follows_its_generator_and_accepts_channel_last_memory():
    images = torch.rand(8, 96, 96, 3).permute(0, 3, 1, 2)
    a = random_crop(images, (84, 84), generator=torch.Generator().manual_seed(3))
    b = random_crop(images.contiguous(), (84, 84), generator=torch.Generator().manual_seed(3))
    assert a.shape == (8, 3, 84, 84)
    torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_center_crop_equals_slicing():
    images = coded_images(2, 3, 96, 95)
    torch.testing.assert_close(center_crop(images, (84, 84)), images[:, :, 6:90, 5:89], rtol=0, atol=0)
    torch.testing.assert_close(center_crop(images, (96, 95)), images, rtol=0, atol=0)
    assert random_crop(images, (96, 95)).equal(images)


@pytest.mark.parametrize("crop", [random_crop, center_crop])
def test_crop_errors(crop):
    images = torch.zeros(2, 3, 32, 40)
    with pytest.raises(ValueError, match=r"crop_shape=\(33, 8\) is larger than the image \(H, W\)=\(32, 40\)"):
        crop(images, (33, 8))
    with pytest.raises(ValueError, match=r"crop_shape=\(0, 8\) must be positive"):
        crop(images, (0, 8))
    with pytest.raises(ValueError, match=r"\(3, 32, 40\); expected \(N, C, H, W\)"):
        crop(images[0], (8, 8))


# ---------------------------------------------------------------------------------------- ResNet


@pytest.mark.parametrize("width", [16, 64])
@pytest.mark.parametrize("size", [96, 84])
def test_resnet_output_shape(width, size):
    net = ResNet18GN(in_channels=3, width=width)
    assert net(torch.rand(2, 3, size, size)).shape == (2, 8 * width, 3, 3)
    assert net.out_channels == 8 * width


def test_resnet_odd_sizes_and_grey_input():
    assert ResNet18GN(in_channels=1, width=8)(torch.rand(1, 1, 65, 33)).shape == (1, 64, 3, 2)


def test_resnet_uses_group_norm_only_with_16_channels_per_group():
    net = ResNet18GN(width=64)
    norms = [m for m in net.modules() if isinstance(m, nn.GroupNorm)]
    assert not [m for m in net.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    # stem + 8 blocks * 2 + 3 shortcuts
    assert len(norms) == 1 + 16 + 3
    assert all(m.num_channels == 16 * m.num_groups for m in norms)


def test_resnet_parameter_count_matches_resnet18_body():
    # torchvision's resnet18 without its fc layer has 11,176,512 parameters; GN has BN's affine count.
    assert n_params(ResNet18GN(width=64)) == 11_176_512


def test_resnet_rejects_widths_without_a_group_split():
    with pytest.raises(ValueError, match="width=56 gives a stage of 56 channels"):
        ResNet18GN(width=56)
    with pytest.raises(ValueError, match="width=0"):
        ResNet18GN(width=0)


# ------------------------------------------------------------------------------- spatial softmax


def test_spatial_softmax_finds_peaks():
    layer = SpatialSoftmax(in_channels=2, num_keypoints=2)
    with torch.no_grad():
        layer.keypoint_maps.weight.copy_(torch.eye(2).reshape(2, 2, 1, 1))
        layer.keypoint_maps.bias.zero_()
    features = torch.zeros(1, 2, 5, 7)
    features[0, 0, 1, 5] = 100.0  # row 1 of 5 -> y = -0.5; column 5 of 7 -> x = 2/3
    features[0, 1, 4, 0] = 100.0  # bottom-left corner
    torch.testing.assert_close(layer(features), torch.tensor([[2 / 3, -0.5, -1.0, 1.0]]))


def test_spatial_softmax_of_a_flat_map_is_the_centre():
    layer = SpatialSoftmax(in_channels=3, num_keypoints=4)
    with torch.no_grad():
        layer.keypoint_maps.weight.zero_()
    out = layer(torch.rand(2, 3, 6, 4))
    assert out.shape == (2, 8)
    torch.testing.assert_close(out, torch.zeros(2, 8))


# -------------------------------------------------------------------------------------- configs


def test_vision_config_accepts_lists_and_validates():
    assert VisionConfig(crop_shape=[76, 76]).crop_shape == (76, 76)
    assert VisionConfig(crop_shape=None).crop_shape is None
    with pytest.raises(ValueError, match=r"crop_shape=\(84,\)"):
        VisionConfig(crop_shape=[84])
    with pytest.raises(ValueError, match=r"crop_shape=\(0, 84\)"):
        VisionConfig(crop_shape=(0, 84))
    with pytest.raises(ValueError, match="num_keypoints=0"):
        VisionConfig(num_keypoints=0)
    with pytest.raises(ValueError, match="feature_dim=-1"):
        VisionConfig(feature_dim=-1)
    with pytest.raises(ValueError, match="width=56 gives a stage of 56 channels"):
        VisionConfig(backbone_width=56)


# ---------------------------------------------------------------------------------- ImageEncoder


def test_image_encoder_crops_at_random_in_training_and_centre_in_eval():
    torch.manual_seed(0)
    encoder = ImageEncoder(VisionConfig(crop_shape=(40, 40), **SMALL), in_channels=3)
    images = torch.rand(4, 3, 48, 48)
    encoder.eval()
    out = encoder(images)
    assert out.shape == (4, 8)
    torch.testing.assert_close(encoder(images), out, rtol=0, atol=0)
    uncropped = ImageEncoder(VisionConfig(crop_shape=None, **SMALL), in_channels=3).eval()
    uncropped.load_state_dict(encoder.state_dict())
    torch.testing.assert_close(uncropped(images[:, :, 4:44, 4:44]), out)

    encoder.train()
    torch.manual_seed(1)
    a = encoder(images)
    assert not torch.allclose(a, encoder(images))
    torch.manual_seed(1)
    torch.testing.assert_close(encoder(images), a, rtol=0, atol=0)


def test_image_encoder_learns_where_a_dot_is():
    # 36x36 images give a 2x2 feature map, the smallest the keypoints can move in.
    torch.manual_seed(0)
    n, size = 16, 36
    positions = torch.randint(2, size - 2, (n, 2))
    images = torch.zeros(n, 1, size, size)
    for i, (row, col) in enumerate(positions.tolist()):
        images[i, 0, row - 1 : row + 2, col - 1 : col + 2] = 1.0
    targets = positions.float() / (size - 1) * 2 - 1
    model = nn.Sequential(ImageEncoder(VisionConfig(crop_shape=None, **SMALL), in_channels=1), nn.Linear(8, 2))
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(30):
        loss = nn.functional.mse_loss(model(images), targets)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert min(losses[-5:]) < losses[0] / 10, (losses[0], losses[-5:])


# ------------------------------------------------------------------------------- MultiObsEncoder


def two_cameras(**overrides) -> tuple[dict[str, tuple[int, ...]], VisionConfig]:
    shapes = {"agent_pos": (2,), "top": (40, 40, 3), "wrist": (40, 40, 3), "joints": (2, 3)}
    return shapes, VisionConfig(crop_shape=(36, 36), **SMALL, **overrides)


def random_obs(shapes: dict[str, tuple[int, ...]], batch: int, steps: int) -> dict[str, torch.Tensor]:
    return {k: torch.rand(batch, steps, *shape) for k, shape in shapes.items()}


@pytest.mark.parametrize("share", [False, True])
def test_multi_obs_encoder_layout(share):
    torch.manual_seed(0)
    shapes, config = two_cameras(share_encoder=share)
    encoder = MultiObsEncoder(shapes, n_obs_steps=2, config=config).eval()
    assert encoder.image_keys == ["top", "wrist"] and encoder.lowdim_keys == ["agent_pos", "joints"]
    obs = random_obs(shapes, batch=3, steps=2)
    out = encoder(obs)
    per_step = 2 * 8 + 2 + 6
    assert encoder.output_dim == 2 * per_step
    assert out.shape == (3, encoder.output_dim)
    steps = out.reshape(3, 2, per_step)
    for t in range(2):
        for i, key in enumerate(["top", "wrist"]):
            frames = obs[key][:, t].permute(0, 3, 1, 2)
            module = encoder.encoders["shared" if share else key]
            torch.testing.assert_close(steps[:, t, 8 * i : 8 * (i + 1)], module(frames))
        torch.testing.assert_close(steps[:, t, 16:18], obs["agent_pos"][:, t])
        torch.testing.assert_close(steps[:, t, 18:], obs["joints"][:, t].flatten(1))


def test_multi_obs_encoder_cameras_only():
    shapes = {"image": (40, 36, 1)}
    encoder = MultiObsEncoder(shapes, n_obs_steps=3, config=VisionConfig(crop_shape=(34, 34), **SMALL))
    out = encoder(random_obs(shapes, batch=2, steps=3))
    assert out.shape == (2, 3 * 8) == (2, encoder.output_dim)


def test_shared_encoder_saves_exactly_one_image_encoder():
    shapes, config = two_cameras()
    separate = MultiObsEncoder(shapes, 2, config)
    shared = MultiObsEncoder(shapes, 2, VisionConfig(crop_shape=(36, 36), share_encoder=True, **SMALL))
    assert n_params(separate) - n_params(shared) == n_params(ImageEncoder(config, in_channels=3))
    assert len(separate.encoders) == 2 and len(shared.encoders) == 1


def test_multi_obs_encoder_errors():
    _, config = two_cameras()
    shared = VisionConfig(share_encoder=True, crop_shape=(36, 36), **SMALL)
    with pytest.raises(ValueError, match=r"same shape; got \{'top': \(40, 40, 3\), 'wrist': \(48, 48, 3\)\}"):
        MultiObsEncoder({"top": (40, 40, 3), "wrist": (48, 48, 3)}, 2, shared)
    with pytest.raises(ValueError, match=r"'top' has per-step shape \(3, 96, 96\), which looks channel-first"):
        MultiObsEncoder({"top": (3, 96, 96)}, 2, config)
    with pytest.raises(ValueError, match=r"'top' of per-step shape \(34, 40, 3\): crop_shape=\(36, 36\) is larger"):
        MultiObsEncoder({"top": (34, 40, 3)}, 2, config)
    with pytest.raises(ValueError, match="no image key.*LowDimObsEncoder"):
        MultiObsEncoder({"agent_pos": (2,)}, 2, config)
    encoder = MultiObsEncoder({"top": (40, 40, 3)}, 2, config)
    with pytest.raises(ValueError, match=r"'top' has shape \(2, 2, 3, 40, 40\)"):
        encoder({"top": torch.rand(2, 2, 3, 40, 40)})


def test_images_too_small_for_a_2x2_feature_map_are_refused():
    # 32 pixels become one feature-map cell, where spatial softmax would output a constant.
    with pytest.raises(ValueError, match=r"'top' of per-step shape \(40, 40, 3\), crop_shape=\(32, 36\).*1x2"):
        MultiObsEncoder({"top": (40, 40, 3)}, 2, VisionConfig(crop_shape=(32, 36), **SMALL))
    with pytest.raises(ValueError, match=r"\(H, W\)=\(32, 32\) give a 1x1 feature map"):
        MultiObsEncoder({"top": (32, 32, 1)}, 2, VisionConfig(crop_shape=None, **SMALL))
    encoder = ImageEncoder(VisionConfig(crop_shape=None, **SMALL))
    with pytest.raises(ValueError, match=r"images of shape \(2, 3, 32, 64\).*1x2 feature map"):
        encoder(torch.rand(2, 3, 32, 64))


@pytest.mark.parametrize("share", [False, True])
def test_gradients_reach_every_parameter(share):
    torch.manual_seed(0)
    shapes, config = two_cameras(share_encoder=share)
    encoder = MultiObsEncoder(shapes, n_obs_steps=2, config=config).train()
    encoder(random_obs(shapes, batch=2, steps=2)).square().sum().backward()
    for name, p in encoder.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name
    assert math.isfinite(sum(p.grad.sum().item() for p in encoder.parameters()))
