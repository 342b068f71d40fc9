"""Tests of cloud/learning/."""
