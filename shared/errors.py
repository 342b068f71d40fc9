"""Named errors. Each says what was wrong and, where it can, what to do."""


class EdgeloopError(Exception):
    """Base class of every error edgeloop raises on purpose."""


class ConfigError(EdgeloopError):
    """A configuration file or setting is missing or invalid."""


class BadRedisURL(ConfigError, ValueError):
    """A Redis URL that cannot be used as written (a cluster or Sentinel URL without its
    nodes, service or port). A ValueError too: the settings' validators report it."""


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


class InputError(EdgeloopError):
    """A request's input is invalid (wrong feature count, non-finite value, label out of range)."""


class NotFound(EdgeloopError):
    """Something a request refers to (a request id, a version) is unknown or has expired."""


class Unavailable(EdgeloopError):
    """The service cannot answer right now (for example, no model can serve); retry later."""
