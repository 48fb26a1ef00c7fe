"""The controller loop against a broken policy: wrong-shaped, non-finite and out-of-range chunks are
interventions, a streak of them stops the run, and a policy too slow for its chunk is reported."""

from __future__ import annotations

import re

import numpy as np
import pytest

from diffusion_policy.deploy.safety import SafetyConfig
from tests.test_deploy_loop import TimedPolicy, run


class BrokenPolicy(TimedPolicy):
    """Good chunks, except those whose call index is in `bad` (all from `bad_from` on), made by `breaker`."""

    def __init__(self, breaker, bad=(), bad_from=None, **kwargs):
        super().__init__(latency=0.0, period=0.05, **kwargs)
        self.breaker, self.bad, self.bad_from = breaker, set(bad), bad_from

    def predict(self, request):
        chunk = super().predict(request)
        n = len(self.calls) - 1
        return self.breaker(chunk) if n in self.bad or (self.bad_from is not None and n >= self.bad_from) else chunk


def short(chunk):
    return chunk[:5]


def nan(chunk):
    return np.full_like(chunk, np.nan)


def huge(chunk):
    return chunk + 1e6


def test_wrong_shaped_chunk_is_refused_held_and_named():
    robot, log, _ = run(BrokenPolicy(short, bad=[2]), max_ticks=40)
    assert log.stop_reason == "max_ticks"
    bad = [i for i in log.interventions if i.kind == "bad_chunk"]
    assert len(bad) == 1
    assert bad[0].detail == ("chunk 2: chunk of shape (5, 1); the policy's spec says (T, Da) = (16, 1); refused, "
                             "the plan in hand goes on")
    assert len(robot.received) == log.n_ticks  # a command every tick: nothing was skipped


@pytest.mark.parametrize(("breaker", "reason"), [
    (short, r"chunk of shape \(5, 1\)"),
    (nan, r"chunk with NaN or inf in 16 of 16 rows"),
    (huge, r"values outside \[\[-1000\.0\], \[1000\.0\]\]"),
])
def test_a_streak_of_bad_chunks_stops_the_run(breaker, reason):
    safety = SafetyConfig(low=[-1e3], high=[1e3], max_bad_chunks=3)
    robot, log, _ = run(BrokenPolicy(breaker, bad_from=1), max_ticks=300, safety=safety)
    assert log.n_ticks < 300
    assert log.stop_reason.startswith("3 bad chunks in a row (max_bad_chunks=3); last: chunk 3: ")
    assert re.search(reason, log.stop_reason), log.stop_reason
    assert [i.kind for i in log.interventions].count("bad_chunk") == 3
    sent = np.array([a for _, a in robot.received])
    assert np.isfinite(sent).all() and np.all(np.abs(sent) <= 1e3)


def test_a_good_chunk_resets_the_streak():
    safety = SafetyConfig(max_bad_chunks=2)
    _, log, _ = run(BrokenPolicy(nan, bad=[1, 3, 5, 7]), max_ticks=60, safety=safety)
    assert log.stop_reason == "max_ticks"
    assert [i.kind for i in log.interventions].count("bad_chunk") >= 2


def test_a_bad_first_chunk_stops_before_any_command():
    robot, log, _ = run(BrokenPolicy(nan, bad=[0]), max_ticks=40)
    assert log.stop_reason.startswith("ValueError: first chunk refused: chunk 0: chunk with NaN or inf")
    assert robot.received == [] and robot.closed


def test_latency_longer_than_a_chunk_covers_is_reported_once():
    period = 0.05  # a chunk covers horizon - n_obs_steps + 1 = 15 ticks = 0.75 s
    with pytest.warns(UserWarning, match=r"inference latency 8\d\d\.\d ms exceeds the 15 ticks \(750\.0 ms\)"):
        _, log, _ = run(TimedPolicy(latency=0.8, period=period), max_ticks=45)
    assert [i.kind for i in log.interventions].count("slow_policy") == 1


def test_max_bad_chunks_must_be_positive():
    with pytest.raises(ValueError, match="max_bad_chunks=0 must be an integer >= 1"):
        SafetyConfig(max_bad_chunks=0)
