"""Named errors. Each says what was wrong and, where it can, what to do."""


class EdgeloopError(Exception):
    """Base class of every error edgeloop raises on purpose."""


class ConfigError(EdgeloopError):
    """A configuration file or setting is missing or invalid."""


class SignatureError(EdgeloopError):
    """A signature is missing, malformed, or does not verify with the configured key."""


class IntegrityError(EdgeloopError):
    """Bytes do not hash to the sha256 they claim."""


class ArtifactError(EdgeloopError):
    """An artifact or delta cannot be decoded or is too large."""


class MessageError(EdgeloopError):
    """A wire message does not parse or has the wrong schema version."""


class ModelRejected(EdgeloopError):
    """A model loaded but failed a check (shape, dtype, probe agreement)."""
