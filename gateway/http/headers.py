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


MAX_PREFERENCES = 32  # entries of an Accept or Accept-Encoding header that are read; the rest are ignored


def qualities(value: str) -> dict[str, float]:
    """The q-value of each token of an Accept-style header, lower-cased (no q is 1; a malformed or out of range
    q is 0; the first mention of a token wins)."""
    found: dict[str, float] = {}
    for item in value.split(",", MAX_PREFERENCES)[:MAX_PREFERENCES]:
        token, _, params = item.partition(";")
        token = token.strip().lower()
        if not token or token in found:
            continue
        quality = 1.0
        for param in params.split(";")[:MAX_PREFERENCES]:
            name, _, number = param.partition("=")
            if name.strip().lower() == "q":
                try:
                    quality = float(number.strip())
                except ValueError:
                    quality = 0.0
                if not 0.0 <= quality <= 1.0:  # also NaN
                    quality = 0.0
        found[token] = quality
    return found
