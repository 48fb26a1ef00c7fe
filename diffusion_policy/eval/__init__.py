"""Evaluation: sampling studies and (later) closed-loop rollouts."""
