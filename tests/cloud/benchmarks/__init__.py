"""Tests of cloud/benchmarks/."""
