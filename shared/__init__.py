"""Code common to the edgeloop cloud and edge: wire messages, Redis names,
artifact codec, signing. Imports only the standard library, pydantic, numpy,
zstandard and cryptography, so that an edge install stays small."""

__version__ = "0.1.0"
