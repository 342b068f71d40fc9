"""Tests of cloud/data/."""
