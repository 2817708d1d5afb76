"""One router per protocol or resource."""

from covid_cxr.serving.routers import health, kserve, page, tfserving, upload
from covid_cxr.serving.routers.page import STATIC_DIR

ROUTERS = [health.router, page.router, tfserving.router, kserve.router, upload.router]

__all__ = ["ROUTERS", "STATIC_DIR"]
