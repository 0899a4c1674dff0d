"""The seed's 20-line demo (FastAPI ``StreamingResponse`` on uvicorn), the CPU floor benchmark.

Benchmark-only code: asyncio on purpose. See README.md beside this file.
"""

from .app import create_app, main

__all__ = ["create_app", "main"]
