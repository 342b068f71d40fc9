"""Tests of cloud/api/."""
