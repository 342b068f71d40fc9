"""Tests of cloud/demo/."""
