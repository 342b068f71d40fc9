"""Tests of cloud/registry/."""
