"""Domain errors with Grafana's exact statuses and messages, and the one middleware that renders them."""

from __future__ import annotations

import logging
import secrets
from collections.abc import Awaitable, Callable
from typing import Any

import msgspec
from aiohttp import web

from gateway.wire import json_response

log = logging.getLogger("gateway")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


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


class BadRequestData(GatewayError):
    status, message, trace = 400, "bad request data", True


class IdInvalid(GatewayError):
    status, message = 400, "id is invalid"


class UidInvalidPath(GatewayError):
    status, message = 400, "UID is invalid"


class DataSourceNotFound(GatewayError):
    status, message = 404, "Data source not found"


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


class InvalidURL(GatewayError):
    status, message, trace = 400, "Validation error, invalid URL", True


class DataSourceReadOnly(GatewayError):
    status = 403


class AccessDenied(GatewayError):
    """403 from the RBAC middleware (E4), naming the permission that was needed."""

    status = 403

    def __init__(self, needed: str) -> None:
        super().__init__(f"You'll need additional permissions to perform this action. Permissions needed: {needed}")

    def body(self) -> dict[str, Any]:
        """E4: a random ACE reference, the message and the title."""
        reference = "ACE" + "".join(secrets.choice("0123456789") for _ in range(10))
        return {"accessErrorId": reference, "message": self.message, "title": "Access denied"}


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


class DatabaseUnavailable(GatewayError):
    status, message, trace = 503, "Database unavailable", True


class NotFound(GatewayError):
    status, message = 404, "Not found"


def _render(error: GatewayError) -> web.Response:
    response = json_response(error.body(), status=error.status)
    if error.headers:
        response.headers.update(error.headers)
    return response


@web.middleware
async def error_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Turn every failure into Grafana's JSON error body; the only place that does so."""
    try:
        return await handler(request)
    except GatewayError as error:
        return _render(error)
    except msgspec.DecodeError:
        return _render(BadRequestData())
    except web.HTTPException as error:
        if error.status < 400:
            raise
        if error.status == 404:
            return _render(NotFound())
        if error.status == 413:
            return _render(GatewayError("Request body too large", status=413))
        allow = {"Allow": error.headers["Allow"]} if "Allow" in error.headers else None
        return _render(GatewayError(error.reason, status=error.status, headers=allow))
    except ConnectionResetError:
        raise
    except Exception:
        log.exception("unhandled error", extra={"method": request.method, "path": request.path})
        return _render(GatewayError())
