"""The benchmark agent on the OpenAI Agents SDK: FastAPI on uvicorn, asyncio.

Benchmark-only code (asyncio on purpose). See README.md beside this file.
"""

from .app import Settings, create_app, main

__all__ = ["Settings", "create_app", "main"]
