"""The edgeloop cloud: feedback ingest, replay buffer, continual trainer,
exporter (torch -> TFLite -> int8, checked in the edge runtime), the gate, the
publisher and the ``edgeloop`` CLI. Imports ``shared`` and ``shared.runtime`` only."""
