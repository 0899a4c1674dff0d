"""The gateway: app factory, admission, error mapping, metrics, drain and ``serve()``.

``create_app(config, backend=...)`` builds the ASGI app; ``serve(config)``
runs it under Hypercorn with the backend, signal handling and graceful drain.
"""

from ._admission import Admission, AdmissionStatistics, Lease, Limits
from ._app import Gateway, create_app
from ._context import RequestContext
from ._drain import Drain, RequestControl
from ._metrics import GatewayMetrics, Histogram
from ._serve import open_backend, run_workers, serve, worker_config

__all__ = [
    "Admission",
    "AdmissionStatistics",
    "Drain",
    "Gateway",
    "GatewayMetrics",
    "Histogram",
    "Lease",
    "Limits",
    "RequestControl",
    "RequestContext",
    "create_app",
    "open_backend",
    "run_workers",
    "serve",
    "worker_config",
]
