"""The cloud REST API (FastAPI): ``cloud.api.app.create_app(settings)``.

One router module per resource under ``routers/``; the public shapes they
return are in ``schemas.py`` and come from ``cloud.api.views.versions``, the same
code the CLI's output is built from. Settings (``ApiSettings``) are built in
``main()`` and passed in, never read at import time.
"""
