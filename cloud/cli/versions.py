"""``edgeloop versions|explain|diff``: read a fleet's versions through the REST API.

Each command GETs one public shape (``cloud.api.schemas``) and renders it with
``cloud.cli.render.explain`` or ``cloud.cli.render.versions``, or prints the API's JSON as one
line with ``--json``.
The model defaults to the fleet's only model; with several, pass ``--model``.
Failures (API unreachable, unknown version, malformed ref) are one line on
stderr and exit 2 (``cloud.cli.main.main``).
"""

from __future__ import annotations

import argparse
from typing import Any

from cloud.api.schemas import DiffPublic, ExplanationPublic, ModelsPublic, VersionsPublic
from cloud.cli.client import api_client, api_options, only_model
from cloud.cli.output import show

REF_HELP = "version: number (3 or v3), label (stable) or sha256 (6+ hex digits)"


def _common(p: argparse.ArgumentParser) -> None:
    api_options(p)
    p.add_argument("--model", "-m", help="model name (default: the fleet's only model)")


def versions_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("model", nargs="?", help="model name (default: the fleet's only model)")
    p.add_argument("--model", "-m", dest="model_option", help="model name, as an option")
    p.add_argument("--limit", type=int, help="only the newest N versions")
    api_options(p)


def explain_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("version", help=REF_HELP)
    _common(p)


def diff_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("a", help="the version to compare from (" + REF_HELP + ")")
    p.add_argument("b", help="the version to compare to")
    _common(p)


def versions(args: argparse.Namespace) -> int:
    api = api_client(args)
    model = args.model or args.model_option
    if model is None:
        models, raw = api.get_as(ModelsPublic, "/v1/models")
        if len(models.models) != 1:
            return show(args, raw, models_table_of(models))
        model = models.models[0].name
    params = {"limit": str(args.limit)} if args.limit else {}
    versions, raw = api.get_as(VersionsPublic, "/v1/models/{}/versions", model, **params)
    from cloud.cli.render.versions import versions_table

    return show(args, raw, versions_table(versions))


def explain(args: argparse.Namespace) -> int:
    api = api_client(args)
    model = args.model or only_model(api)
    explanation, raw = api.get_as(
        ExplanationPublic, "/v1/models/{}/versions/{}/explanation", model, args.version
    )
    from cloud.cli.render.explain import explanation_view

    return show(args, raw, explanation_view(explanation))


def diff(args: argparse.Namespace) -> int:
    api = api_client(args)
    model = args.model or only_model(api)
    diff, raw = api.get_as(DiffPublic, "/v1/models/{}/diff", model, a=args.a, b=args.b)
    from cloud.cli.render.versions import diff_view

    return show(args, raw, diff_view(diff))


def models_table_of(models: ModelsPublic) -> Any:
    from cloud.cli.render.versions import models_table

    return models_table(models)
