"""Evaluation: closed-loop rollouts over vector envs (metrics, videos, a training callback) and sampling studies."""
