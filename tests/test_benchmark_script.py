"""scripts/benchmark.py: the plain-PyTorch baseline it builds, the GEMM shapes of the weight-only case and
the quantised weights it feeds."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("benchmark_script", ROOT / "scripts" / "benchmark.py")
benchmark = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(benchmark)


def test_plain_baseline_has_only_pytorch_convolutions_and_the_same_outputs():
    network = benchmark.make_policy(benchmark.synthetic_dataset(benchmark.STATE_OBS_DIM, n_episodes=2),
                                    (32, 64, 128), torch.device("cpu")).network
    plain = benchmark.with_plain_convolutions(network)
    gemm_types = (benchmark.GemmConv1d, benchmark.GemmConvTranspose1d)
    assert not any(isinstance(m, gemm_types) for m in plain.modules())
    assert sum(type(m) is torch.nn.ConvTranspose1d for m in plain.modules()) == 2  # one per up level
    assert sum(isinstance(m, gemm_types) for m in network.modules()) == sum(
        type(m) in (torch.nn.Conv1d, torch.nn.ConvTranspose1d) for m in plain.modules())
    x, cond = torch.randn(2, 16, 2), torch.randn(2, network.global_cond_dim)
    torch.testing.assert_close(plain(x, 3, cond), network(x, 3, cond), rtol=1e-4, atol=1e-5)


def test_conv_gemms_are_the_bf16_convolutions_of_the_paper_network():
    network = benchmark.make_policy(benchmark.synthetic_dataset(benchmark.STATE_OBS_DIM, n_episodes=2),
                                    (256, 512, 1024), torch.device("cpu")).network
    shapes = benchmark.conv_gemms(network)
    assert len(shapes) == 30
    assert {m for m, _, _ in shapes} == {4, 8, 16}  # horizon 16 halved twice, batch 1
    # Every convolution weight except the float32 first block's and the output head's.
    first, head = network.down[0][0], network.final
    fp32 = sum(m.weight.numel() for part in (first, head) for m in part.modules() if isinstance(m, torch.nn.Conv1d))
    kinds = (torch.nn.Conv1d, torch.nn.ConvTranspose1d)
    convs = sum(m.weight.numel() for m in network.modules() if isinstance(m, kinds))
    assert sum(n * k for _, n, k in shapes) == convs - fp32 == 60_293_120


def test_quantised_weights_reproduce_the_product():
    g = torch.Generator().manual_seed(0)
    weight, rows = 0.02 * torch.randn(64, 256, generator=g), torch.randn(4, 256, generator=g).bfloat16()
    exact = rows.float() @ weight.t()
    int8 = torch.ops.aten._weight_int8pack_mm(rows, *benchmark.int8_weights(weight)).float()
    packed, scale_zero = benchmark.int4_weights(weight)
    int4 = torch.ops.aten._weight_int4pack_mm_for_cpu(rows, packed, benchmark.INT4_GROUP, scale_zero).float()
    scale = exact.abs().max()
    assert (int8 - exact).abs().max() <= 0.02 * scale  # 8 bits
    assert (int4 - exact).abs().max() <= 0.15 * scale  # 4 bits in groups of 128
    assert (int4 - exact).abs().max() > (int8 - exact).abs().max()


def test_unknown_case_lists_the_valid_ones():
    with pytest.raises(SystemExit, match=r"unknown case\(s\) \['warp'\].*weight_only_gemms"):
        benchmark.run(True, torch.device("cpu"), ["warp"])


def test_lerobot_comparison_without_lerobot_says_how_to_install_it(tmp_path):
    import subprocess
    import sys
    if importlib.util.find_spec("lerobot") is not None:
        pytest.skip("lerobot is importable here: the script would run the comparison")
    out = tmp_path / "lerobot.json"
    done = subprocess.run([sys.executable, str(ROOT / "scripts" / "benchmark_lerobot.py"), "--out", str(out)],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode != 0
    assert "pip install lerobot" in done.stderr and "torch < 2.11" in done.stderr
    assert not out.exists()


def test_lerobot_comparison_json_has_both_sides_of_every_case():
    import json
    results = json.loads((ROOT / "benchmarks" / "lerobot_cpu.json").read_text())["results"]
    chunk, train = results["ddim10_chunk_b1"], results["train_step_b64"]
    assert chunk["ratio"] == pytest.approx(chunk["lerobot"]["p50_ms"] / chunk["ours"]["p50_ms"])
    assert train["ratio_fp32"] == pytest.approx(train["lerobot"]["p50_ms"] / train["ours_fp32"]["p50_ms"])
    assert train["ratio_bf16"] == pytest.approx(train["lerobot_amp_bf16"]["p50_ms"] / train["ours_bf16"]["p50_ms"])
    # Same shapes: the two U-Nets are within 4% in size.
    assert chunk["parameters"]["ours"] == pytest.approx(chunk["parameters"]["lerobot"], rel=0.04)
