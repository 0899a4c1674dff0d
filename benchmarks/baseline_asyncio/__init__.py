"""The asyncio design trio_agent replaces: FastAPI on uvicorn with a Semaphore and a Queue.

Benchmark-only code: the one place in the repository where asyncio primitives are used on
purpose. See README.md beside this file.
"""

from .app import Settings, create_app, main

__all__ = ["Settings", "create_app", "main"]
