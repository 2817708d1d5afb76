"""create_app(settings): the FastAPI app; the lifespan handler loads the bundle once per worker."""

from __future__ import annotations

import asyncio
import gc
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI
from fastapi.staticfiles import StaticFiles

from covid_cxr import __version__
from covid_cxr.bundle import INTENDED_USE
from covid_cxr.serving.deps import ServerState
from covid_cxr.serving.errors import install_error_handlers
from covid_cxr.serving.routers import ROUTERS, STATIC_DIR
from covid_cxr.serving.settings import Settings


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    """Load the bundle and start the micro-batcher; stop it on shutdown."""
    state = await asyncio.to_thread(ServerState.load, app.state.settings)
    gc.collect()
    gc.freeze()  # the model and libraries live as long as the server: full collections skip them
    async with state.runner:
        app.state.served = state
        yield


def create_app(settings: Settings) -> FastAPI:
    """The app for `settings`; the bundle is loaded when it starts (lifespan), not here."""
    app = FastAPI(title="covid-cxr", version=__version__, lifespan=lifespan, description=INTENDED_USE)
    app.state.settings = settings
    install_error_handlers(app)
    for router in ROUTERS:
        app.include_router(router)
    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")
    return app
