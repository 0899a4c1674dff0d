"""The service's OpenTelemetry ``Resource``, hashed once.

The SDK's OTLP encoder groups a batch's spans by resource: it hashes the
resource once per span, and ``Resource.__hash__`` JSON-encodes every resource
attribute each time (a cost measured in docs/decisions/016). A resource is
immutable, so its hash can be computed once;
:class:`HashedResource` does that and is otherwise the SDK's ``Resource``.
"""

from __future__ import annotations

from opentelemetry.sdk.resources import SERVICE_NAME, Resource

__all__ = ["DEFAULT_SERVICE_NAME", "HashedResource", "service_resource"]

DEFAULT_SERVICE_NAME = "trio-agent"


class HashedResource(Resource):
    """A ``Resource`` whose hash is computed on first use and kept (its attributes never change)."""

    _hash: int | None = None

    def __hash__(self) -> int:
        h = self._hash
        if h is None:
            h = self._hash = super().__hash__()
        return h


def service_resource() -> HashedResource:
    """The resource the environment describes (``OTEL_SERVICE_NAME``, ``OTEL_RESOURCE_ATTRIBUTES``),
    named ``trio-agent`` when nothing names the service."""
    resource = Resource.create()
    if str(resource.attributes.get(SERVICE_NAME, "")).startswith("unknown_service"):
        resource = resource.merge(Resource({SERVICE_NAME: DEFAULT_SERVICE_NAME}))
    return HashedResource(resource.attributes, resource.schema_url)
