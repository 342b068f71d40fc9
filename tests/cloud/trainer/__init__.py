"""Tests of cloud/trainer/."""
