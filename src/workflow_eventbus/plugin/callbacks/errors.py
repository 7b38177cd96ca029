"""The one failure type of a callback call, whichever transport carried it."""

from __future__ import annotations

from ...core.errors import ProviderError


class RpcError(ProviderError):
    """A unary call failed: ``code`` is the gRPC status name, ``details`` its message.

    ``unprocessed`` means the server never saw the call (refused stream, above a
    GOAWAY's last id, connection draining before it was sent): safe to send again.
    Only the HTTP/2 client sets it; grpc.aio resends such calls itself."""

    def __init__(self, code: str, details: str, *, unprocessed: bool = False) -> None:
        self.code = code
        self.details = details
        self.unprocessed = unprocessed
        super().__init__(f"{code}: {details}")
