"""Every error a client can see, with Grafana's exact status and message, and `translate()`: the one place
that turns outside exceptions (msgspec, asyncpg, the upstream client, timeouts) into them.

Code anywhere raises these; `responses.error_middleware` renders them, and the query path (one result per
refId) calls `translate()` itself. No message is written anywhere else.
"""

from __future__ import annotations

import secrets
from typing import Any

import asyncpg
import msgspec

from gateway.http.pool import UpstreamError, UpstreamHeadersTooLarge, UpstreamTimeout

_GO_ESCAPES = {"\a": "\\a", "\b": "\\b", "\f": "\\f", "\n": "\\n", "\r": "\\r", "\t": "\\t", "\v": "\\v"}


def go_quote(value: str) -> str:
    """A string as Go's %q (strconv.Quote) writes it in Grafana's messages, log lines and series names: quote
    and backslash escaped, printable characters kept, the others as Go escapes them."""
    if value.isprintable():  # the usual case, and the fast one
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    out = ['"']
    for char in value:
        code = ord(char)
        if char in ('"', "\\"):
            out.append("\\" + char)
        elif char.isprintable():
            out.append(char)
        elif char in _GO_ESCAPES:
            out.append(_GO_ESCAPES[char])
        else:
            out.append(f"\\x{code:02x}" if code < 0x80 else f"\\u{code:04x}" if code < 0x10000 else f"\\U{code:08x}")
    out.append('"')
    return "".join(out)


class GatewayError(Exception):
    """An error a client sees as Grafana would render it.

    Shapes (spec-crud §1.2): E1 `{"message"}`; E2 adds `traceID` (trace=True); E3 adds `messageId`
    and `statusCode` (message_id set).
    """

    status: int = 500
    message: str = "Internal Server Error"
    message_id: str | None = None
    trace: bool = False

    def __init__(self, message: str | None = None, *, status: int | None = None, trace: bool | None = None,
                 headers: dict[str, str] | None = None) -> None:
        if message is not None:
            self.message = message
        if status is not None:
            self.status = status
        if trace is not None:
            self.trace = trace
        self.headers = headers
        super().__init__(self.message)

    def body(self) -> dict[str, Any]:
        """The JSON body Grafana writes for this error (keys sorted by the encoder)."""
        body: dict[str, Any] = {"message": self.message}
        if self.message_id is not None:
            body.update(messageId=self.message_id, statusCode=self.status, traceID="")
        elif self.trace:
            body["traceID"] = ""
        return body


# -- requests -------------------------------------------------------------------------------------------

class BadRequestData(GatewayError):
    status, message, trace = 400, "bad request data", True


class IdInvalid(GatewayError):
    status, message = 400, "id is invalid"


class UidInvalidPath(GatewayError):
    status, message = 400, "UID is invalid"


class NotFound(GatewayError):
    status, message = 404, "Not found"


class OriginNotAllowed(GatewayError):
    """403 for a browser request from another origin that would change something (Grafana's CSRF check): the
    admin page's basic-auth prompt leaves credentials a browser sends with any site's form post."""

    status, message = 403, "origin not allowed"


class MetricsUnauthorized(GatewayError):
    """401 from /metrics when [metrics] basic auth is set and the request does not carry it (Grafana writes
    the status alone; the challenge header lets curl and browsers ask)."""

    status, message = 401, "Unauthorized"

    def __init__(self) -> None:
        super().__init__(headers={"WWW-Authenticate": 'Basic realm="metrics"'})


class MethodNotAllowed(GatewayError):
    """405 with the Allow header listing what the route takes."""

    status, message = 405, "Method not allowed"

    def __init__(self, allowed: str) -> None:
        super().__init__(headers={"Allow": allowed})


class RequestBodyTooLarge(GatewayError):
    status, message = 413, "Request body too large"


class PageInvalid(GatewayError):
    status, message = 400, "limit and page must be positive integers"


# -- authentication and authorization ---------------------------------------------------------------------

class AccessDenied(GatewayError):
    """403 from the RBAC middleware (E4), naming the permission that was needed."""

    status = 403

    def __init__(self, needed: str) -> None:
        super().__init__(f"You'll need additional permissions to perform this action. Permissions needed: {needed}")

    def body(self) -> dict[str, Any]:
        """E4: a random ACE reference, the message and the title."""
        reference = "ACE" + "".join(secrets.choice("0123456789") for _ in range(10))
        return {"accessErrorId": reference, "message": self.message, "title": "Access denied"}


class DataSourceAccessDenied(GatewayError):
    status, message, trace = 403, "Access denied to datasource", True


class Unauthorized(GatewayError):
    """401 as written by Grafana's WriteErrOrFallback: E3 plus `"extra": null`."""

    status, message, message_id = 401, "Unauthorized", "auth.unauthorized"

    def __init__(self, message: str | None = None, message_id: str | None = None) -> None:
        if message_id is not None:
            self.message_id = message_id
        super().__init__(message)

    def body(self) -> dict[str, Any]:
        """E3 with the `extra` key Grafana's 401 writer always adds."""
        return {**super().body(), "extra": None}


def invalid_api_key() -> Unauthorized:
    """401 for a token that is malformed or unknown."""
    return Unauthorized("Invalid API key", "api-key.invalid")


def bad_credentials() -> Unauthorized:
    """401 for a wrong user name or password."""
    return Unauthorized("Invalid username or password", "password-auth.failed")


def revoked_api_key() -> Unauthorized:
    """401 for a revoked token."""
    return Unauthorized("Revoked API key", "api-key.revoked")


def expired_api_key() -> Unauthorized:
    """401 for a token past its expiry."""
    return Unauthorized("Expired API key", "api-key.expired")


def api_key_other_org() -> Unauthorized:
    """401 for a token used with another org's id."""
    return Unauthorized("API key does not belong to the requested organization", "api-key.organization-mismatch")


# -- data sources ---------------------------------------------------------------------------------------

class DataSourceNotFound(GatewayError):
    status, message = 404, "Data source not found"


class DataSourceNotFoundTraced(GatewayError):
    """The not-found of the health, resources and query paths (E2)."""

    status, message, trace = 404, "Data source not found", True


class ProxyDataSourceNotFound(GatewayError):
    status, message, trace = 404, "Unable to find datasource", True


class DataSourceIdMissing(GatewayError):
    status, message = 400, "Datasource id is missing"


class DataSourceIdInvalidForDelete(GatewayError):
    status, message = 400, "Missing valid datasource id"


class DataSourceNameExists(GatewayError):
    status, message, trace = 409, "data source with the same name already exists", True


class DataSourceUidExists(GatewayError):
    status, message, trace = 409, "data source with the same uid already exists", True


class DataSourceUpdateNameExists(GatewayError):
    status, trace = 409, True
    message = "Failed to update datasource: data source with the same name already exists"


class DataSourceVersionConflict(GatewayError):
    status, trace = 409, True
    message = "Datasource has already been updated by someone else. Please reload and try again"


class DataSourceNameInvalid(GatewayError):
    status, message, message_id = 400, "Invalid datasource name.", "datasource.nameInvalid"


class DataSourceUrlInvalid(GatewayError):
    status, message, message_id = 400, "Invalid datasource url.", "datasource.urlInvalid"


class DataSourceUidInvalid(GatewayError):
    status, message, message_id = 400, "Invalid datasource UID.", "datasource.uidInvalid"


class DataSourceUidMismatch(GatewayError):
    status = 400
    message = "The uid in the request body does not match the data source's uid; uids cannot be changed"


class InvalidURL(GatewayError):
    status, message, trace = 400, "Validation error, invalid URL", True


class InvalidHeaderSetting(GatewayError):
    """A custom HTTP header (jsonData.httpHeaderNameN / secureJsonData.httpHeaderValueN) that cannot be sent."""

    status, trace = 400, True

    def __init__(self, field: str) -> None:
        super().__init__(f"Validation error, invalid HTTP header in {field}")


class InvalidTextSetting(GatewayError):
    """A field that reaches the data source's requests (user, database, ...) holding control characters."""

    status, trace = 400, True

    def __init__(self, field: str) -> None:
        super().__init__(f"Validation error, control characters in {field}")


class TeamHeadersRefused(GatewayError):
    status = 403
    message = "Cannot create datasource with team HTTP headers, need to use updateDatasourceLBACRules API"


class DataSourceReadOnlyUpdate(GatewayError):
    status, message = 403, "Cannot update read-only data source"


class DataSourceReadOnlyDelete(GatewayError):
    status, message = 403, "Cannot delete read-only data source"


class DataSourceAddFailed(GatewayError):
    status, message, trace = 500, "Failed to add datasource", True


class InvalidDataSourceURL(GatewayError):
    """A stored URL the data source cannot be called at (Grafana's NewDataSourceProxy error)."""

    status, trace = 400, True

    def __init__(self, url: str) -> None:
        super().__init__(f"Invalid data source URL: {go_quote(url)}")


class TLSConfigError(GatewayError):
    status, message, trace = 400, "Unable to load TLS certificate", True


# -- plugins (health, resources) --------------------------------------------------------------------------

class PluginNotRegistered(GatewayError):
    status, message, message_id = 404, "Plugin not registered", "plugin.notRegistered"


class MethodNotImplemented(GatewayError):
    status, message, message_id = 404, "Method not implemented", "plugin.notImplemented"


# -- the data source proxy and every outgoing call -----------------------------------------------------------

class ProxyForbidden(GatewayError):
    """A request the data source's route rules or the whitelist refuse (Grafana's proxy 403s)."""

    status = 403


def not_whitelisted() -> ProxyForbidden:
    """[security] data_source_proxy_whitelist does not list the data source's host."""
    return ProxyForbidden("Data proxy hostname and ip are not included in whitelist")


def route_denied() -> ProxyForbidden:
    """A plugin route that needs a higher role than the caller's."""
    return ProxyForbidden("plugin proxy route access denied")


def method_refused(method: str, ds_type: str) -> ProxyForbidden:
    """A write method that no route of a Prometheus-like data source allows."""
    return ProxyForbidden(f"non allow-listed {method}s not allowed on proxied {ds_type} datasource")


def elasticsearch_refused(method: str) -> ProxyForbidden:
    """Elasticsearch takes reads and POST /_msearch only."""
    if method == "POST":
        return ProxyForbidden("posts not allowed on proxied Elasticsearch datasource except on /_msearch")
    return ProxyForbidden(f"{method.lower()}s not allowed on proxied Elasticsearch datasource")


class ProxyPathClimbs(GatewayError):
    status, message = 400, "Invalid proxy path: dot-segments may not climb above the data source URL"


class UpstreamUnavailable(GatewayError):
    status, message = 502, "Bad Gateway: the data source could not be reached"


class UpstreamNoHost(GatewayError):
    status, message = 502, "Bad Gateway: the data source has no host in its URL"


class UpstreamRequestInvalid(GatewayError):
    """Stored settings (URL path, header) that no valid HTTP request can carry, as Go's transport refuses them."""

    status, message = 502, "Bad Gateway: the data source's settings do not form a valid HTTP request"


class UpstreamTimedOut(GatewayError):
    status, message = 504, "Gateway Timeout: the data source did not answer in time"


class UpstreamTooLarge(GatewayError):
    status, message = 502, "Bad Gateway: the data source's response exceeds [dataproxy] response_limit"


class UpstreamHeadTooLarge(GatewayError):
    status, message = 502, "Bad Gateway: the data source's response headers exceed the gateway's limits"


# -- queries (/api/ds/query) ----------------------------------------------------------------------------------

class NoQueriesFound(GatewayError):
    status, message, message_id = 400, "No queries found", "query.noQueries"


class InvalidDatasourceId(GatewayError):
    status, message, message_id = 400, "Query does not contain a valid data source identifier", \
        "query.invalidDatasourceId"


class DuplicateRefId(GatewayError):
    status, message_id = 400, "query.duplicateRefId"
    message = "Multiple queries using the same RefId is not allowed "  # Grafana's trailing space


class QueryAccessDenied(GatewayError):
    status, message, trace = 403, "Access denied to data source", True


class TooManyQueries(GatewayError):
    """More queries in one request than [query] max_queries."""

    status, message_id = 400, "query.tooManyQueries"

    def __init__(self, limit: int) -> None:
        super().__init__(f"A request may hold at most {limit} queries ([query] max_queries)")


class QueryDataError(GatewayError):
    """An expression pipeline that cannot be built (Grafana logs the reason and answers this)."""

    status, message, trace = 500, "Query data error", True


class QueryModelError(GatewayError):
    """A query model a backend refuses as a whole call (SQL fill parameters, wrongly typed keys); the message
    is Grafana's, made by the backend from the model."""

    status = 400


class QueryFailed(GatewayError):
    """A data source call that failed as a whole, for reasons of gateway's own (logged)."""

    status, message = 500, "An error occurred within the plugin"


# -- the database, accounts -------------------------------------------------------------------------------

class DatabaseUnavailable(GatewayError):
    status, message, trace = 503, "Database unavailable", True


class OrganizationNameTaken(GatewayError):
    status, message, trace = 409, "Organization name taken", True


class OrganizationNotFound(GatewayError):
    status, message = 404, "organization not found"


class ServiceAccountExists(GatewayError):
    status, message, trace = 409, "service account already exists", True


class ServiceAccountNotFound(GatewayError):
    status, message = 404, "service account not found"


class TokenNameExists(GatewayError):
    status, message = 409, "service account token with given name already exists"


class TokenNotFound(GatewayError):
    status, message = 404, "service account token not found"


# -- translation ------------------------------------------------------------------------------------------

# asyncpg failures that mean "Postgres is not there right now", as opposed to a bad statement
_DATABASE_DOWN = (
    asyncpg.PostgresConnectionError,
    asyncpg.InterfaceError,
    asyncpg.CannotConnectNowError,
    asyncpg.OperatorInterventionError,
)


def translate(error: BaseException, *, database: bool = False) -> GatewayError | None:
    """The GatewayError a client sees for `error`, or None when it is unexpected (a logged 500).

    `database=True` says the error came from talking to gateway's own Postgres, where a socket error or a
    timeout means the database is unavailable.
    """
    if isinstance(error, GatewayError):
        return error
    if isinstance(error, msgspec.DecodeError):
        return BadRequestData()
    if isinstance(error, UpstreamError):
        if isinstance(error, UpstreamTimeout):
            return UpstreamTimedOut()
        if isinstance(error, UpstreamHeadersTooLarge):
            return UpstreamHeadTooLarge()
        return UpstreamUnavailable()
    if not database:
        return None  # an asyncpg error elsewhere is a data source's, for its backend to report
    if isinstance(error, asyncpg.DataError):
        return BadRequestData()  # e.g. a NUL character or an out-of-range number sent by the client
    if isinstance(error, (*_DATABASE_DOWN, OSError, TimeoutError)):
        return DatabaseUnavailable()
    return None


# -- provisioning ---------------------------------------------------------------------------------------

class ProvisioningFailed(GatewayError):
    """A provisioning file that cannot be applied; the message names the file, the entry and the field, never
    a value, and nothing was changed."""

    status = 400

    def __init__(self, problem: str) -> None:
        super().__init__(f"Datasources config not applied: {problem}")
