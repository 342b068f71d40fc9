"""The edgeloop edge daemon: serves quantized TFLite models with a local fallback
chain, streams feedback to the cloud and applies signed updates. Never imports
torch or ``cloud``."""
