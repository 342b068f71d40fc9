"""Tests of cloud/export/."""
