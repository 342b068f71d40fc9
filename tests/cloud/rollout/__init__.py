"""Tests of cloud/rollout/."""
