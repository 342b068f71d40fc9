"""Tests of cloud/, one sub-package per pipeline stage like cloud/ itself; fixtures in conftest.py."""
