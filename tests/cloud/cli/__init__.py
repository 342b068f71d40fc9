"""Tests of cloud/cli/."""
