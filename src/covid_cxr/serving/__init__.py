"""The REST server and clinician page: create_app(Settings) and serve() for the CLI."""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import ValidationError

from covid_cxr.errors import ConfigError
from covid_cxr.serving.settings import Settings
from covid_cxr.serving.supervision import PARENT_PID_ENV, die_with_parent

if TYPE_CHECKING:
    from fastapi import FastAPI

    from covid_cxr.serving.app import create_app

__all__ = ["Settings", "app_from_env", "create_app", "serve"]

LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "::1", "[::1]")


def __getattr__(name: str) -> Any:
    """Import create_app (FastAPI, torch) lazily: uvicorn's workers import this package's protocol
    class while they start, before they answer the supervisor's health pings."""
    if name == "create_app":
        from covid_cxr.serving.app import create_app

        return create_app
    raise AttributeError(f"module 'covid_cxr.serving' has no attribute {name!r}")


def app_from_env() -> FastAPI:
    """uvicorn factory for `serve --workers N`: create_app(Settings.from_env()), in each worker process,
    which first arranges to be terminated when the parent process dies."""
    from covid_cxr.serving.app import create_app

    die_with_parent(os.environ.get(PARENT_PID_ENV))
    return create_app(Settings.from_env())


def default_allowed_hosts(host: str) -> tuple[str, ...]:
    """Loopback names when bound to a loopback address (DNS-rebinding guard), else any host."""
    return LOOPBACK_HOSTS if host in LOOPBACK_HOSTS or host.startswith("127.") else ("*",)


def check_bundle(settings: Settings) -> None:
    """Load the bundle once and drop it: raises BundleError when it is broken."""
    from covid_cxr.bundle import load_bundle

    load_bundle(settings.bundle, backend=settings.backend, threads=settings.threads)


def _check_bundle_elsewhere(settings: Settings) -> None:
    """check_bundle in a short-lived process, so that the supervising parent of several workers never
    imports torch or holds a model (its error, a BundleError, comes back here)."""
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as pool:
        pool.submit(check_bundle, settings).result()


def serve(
    bundle: str | Path,
    host: str = "127.0.0.1",
    port: int = 8000,
    workers: int = 1,
    api_key: str | None = None,
    model_name: str | None = None,
    log_level: str = "info",
    header_timeout_s: float = 10.0,
    ssl_keyfile: str | Path | None = None,
    ssl_certfile: str | Path | None = None,
    **options: Any,
) -> None:
    """Run the server with uvicorn until interrupted; `options` are further Settings fields.

    Bad settings (an empty API key, half a TLS pair...) raise ConfigError and a broken bundle a
    BundleError before anything listens. One worker serves the bundle loaded here; with `workers` > 1
    a short-lived process checks the bundle, each worker loads it (settings travel as COVID_CXR_SERVE_*
    variables) and the parent only supervises: it imports no torch and holds no model. Workers are
    terminated when the parent dies (Linux).
    """
    import uvicorn

    from covid_cxr.serving.protocol import HEADER_TIMEOUT_ENV, HeaderTimeoutProtocol

    options.setdefault("allowed_hosts", default_allowed_hosts(host))
    try:
        settings = Settings(bundle=Path(bundle), api_key=api_key, model_name=model_name, **options)
    except ValidationError as exc:
        raise ConfigError(f"invalid server settings: {exc}") from None
    if (ssl_keyfile is None) != (ssl_certfile is None):
        raise ConfigError("give both --ssl-keyfile and --ssl-certfile, or neither")
    for path in (ssl_keyfile, ssl_certfile):
        if path is not None and not Path(path).is_file():
            raise ConfigError(f"{path}: TLS key or certificate file not found")
    if header_timeout_s <= 0:
        raise ConfigError(f"header_timeout_s must be > 0, got {header_timeout_s}")
    os.environ[HEADER_TIMEOUT_ENV] = str(header_timeout_s)
    if workers > 1:
        _check_bundle_elsewhere(settings)
        os.environ.update(settings.to_env())
        os.environ[PARENT_PID_ENV] = str(os.getpid())
        app: Any = "covid_cxr.serving:app_from_env"
    else:
        from covid_cxr.bundle import load_bundle
        from covid_cxr.serving.app import create_app

        predictor = load_bundle(settings.bundle, backend=settings.backend, threads=settings.threads)
        app = create_app(settings, predictor)
    uvicorn.run(
        app,
        factory=workers > 1,
        host=host,
        port=port,
        workers=workers,
        log_level=log_level,
        server_header=False,
        http=HeaderTimeoutProtocol,
        ssl_keyfile=None if ssl_keyfile is None else str(ssl_keyfile),
        ssl_certfile=None if ssl_certfile is None else str(ssl_certfile),
    )
