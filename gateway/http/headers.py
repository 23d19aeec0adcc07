"""Header rules shared by everything that relays HTTP: hop-by-hop headers and what may be relayed."""

from __future__ import annotations

from collections.abc import Sequence

HOP_BY_HOP = frozenset({
    "connection", "proxy-connection", "keep-alive", "proxy-authenticate", "proxy-authorization", "te",
    "trailer", "transfer-encoding", "upgrade",
})
_RESPONSE_DROP = HOP_BY_HOP | {"set-cookie", "content-length"}


def connection_tokens(values: Sequence[str]) -> frozenset[str]:
    """Header names listed in Connection (they are hop-by-hop too)."""
    return frozenset(token.strip().lower() for value in values for token in value.split(","))


def relayable_headers(headers: Sequence[tuple[str, str]]) -> list[tuple[str, str]]:
    """An upstream response's headers without hop-by-hop ones (also those listed in Connection),
    Set-Cookie and Content-Length (the response writer sets its own framing)."""
    kept: list[tuple[str, str]] = []
    listed: list[str] = []
    for name, value in headers:
        lower = name.lower()
        if lower in _RESPONSE_DROP:
            if lower == "connection":
                listed.append(value)
        else:
            kept.append((name, value))
    if listed and (tokens := connection_tokens(listed) - HOP_BY_HOP):
        kept = [(name, value) for name, value in kept if name.lower() not in tokens]
    return kept
