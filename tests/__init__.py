"""The test suite; a package so that tests import shared helpers by their full name (tests.cloud.api_helpers)."""
