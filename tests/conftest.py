"""Test-session set-up: MuJoCo's offscreen backend is chosen before any test module imports mujoco."""

from envs.offscreen import use_default_backend

use_default_backend()
