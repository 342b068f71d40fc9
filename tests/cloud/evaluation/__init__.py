"""Tests of cloud/evaluation/."""
