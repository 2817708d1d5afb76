"""create_app(settings): the FastAPI app; the lifespan handler loads the bundle once per worker."""

from __future__ import annotations

import asyncio
import gc
import warnings
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI
from fastapi.staticfiles import StaticFiles
from starlette.middleware.trustedhost import TrustedHostMiddleware

from covid_cxr import __version__
from covid_cxr.bundle import INTENDED_USE
from covid_cxr.data.dicom import quiet_pydicom_log
from covid_cxr.predictor import Predictor
from covid_cxr.serving.deps import ServerState
from covid_cxr.serving.docs import install_docs
from covid_cxr.serving.errors import install_error_handlers
from covid_cxr.serving.routers import ROUTERS, STATIC_DIR
from covid_cxr.serving.security import SecurityHeaders
from covid_cxr.serving.settings import Settings


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    """Load the bundle and start the micro-batcher; stop it on shutdown.

    pydicom's warnings and log records can quote element values (patient data): the server process
    drops the warnings and withholds the records' text, so neither reaches its log.
    """
    warnings.filterwarnings("ignore", module=r"pydicom(\.|$)")
    quiet_pydicom_log()
    preloaded, app.state.preloaded = app.state.preloaded, None
    state = await asyncio.to_thread(ServerState.load, app.state.settings, preloaded)
    gc.collect()
    gc.freeze()  # the model and libraries live as long as the server: full collections skip them
    async with state.runner:
        app.state.served = state
        yield


def create_app(settings: Settings, predictor: Predictor | None = None) -> FastAPI:
    """The app for `settings`; the bundle is loaded when it starts (lifespan), unless `predictor` is it."""
    app = FastAPI(
        title="covid-cxr",
        version=__version__,
        lifespan=lifespan,
        description=INTENDED_USE,
        docs_url=None,
        redoc_url=None,
    )
    app.state.settings, app.state.preloaded = settings, predictor
    install_error_handlers(app)
    install_docs(app)
    for router in ROUTERS:
        app.include_router(router)
    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")
    app.add_middleware(TrustedHostMiddleware, allowed_hosts=list(settings.allowed_hosts))
    app.add_middleware(SecurityHeaders)  # outermost: also on the Host check's 400
    return app
