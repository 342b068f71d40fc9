"""``edgeloop``: the cloud side's command line, a module per group of commands.

``main`` (the command table), ``client`` (the REST client and its options),
``output`` (``--json`` or a rich rendering), ``trainer`` (``trainer``,
``baseline``), ``keys`` (``keygen``), ``versions`` (``versions``, ``explain``,
``diff``), ``rollout`` (``rollout``, ``fleet``, ``devices``), ``tokens``
(``token``) and ``controller``; ``render/`` holds the rich renderings of the
API's public shapes, and nothing else.
"""
