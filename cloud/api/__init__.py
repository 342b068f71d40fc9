"""The cloud REST API (FastAPI): ``cloud.api.app.create_app(settings)``.

One router module per resource under ``routers/``; they return the public
shapes of ``schemas.py``, built by ``views/`` (``versions``, ``fleet``,
``rollouts``: the registry, the devices and the rollouts in those shapes),
which the CLI reads back over HTTP. The views import nothing of the API but
``schemas``, and no package below the API imports it (``make lint``).
Settings (``ApiSettings``) are built by ``edgeloop api`` (``server.py``) and
passed in, never read at import time.
"""
