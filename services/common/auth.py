"""The bearer-token check the gRPC interceptor and the HTTP middleware share."""

from __future__ import annotations

import hmac


def bearer_matches(authorization: bytes, token: bytes) -> bool:
    """``authorization`` is ``Bearer <token>``: the scheme in any case (RFC 9110 §11.1), the token exactly and
    compared in constant time."""
    scheme, _, given = authorization.partition(b" ")
    return scheme.lower() == b"bearer" and hmac.compare_digest(given, token)
