"""Errors as data, and the one interceptor that turns them into gRPC statuses.

    ServiceError                 base: a gRPC code, an ErrorInfo reason, a safe message
    +-- InvalidArgument          INVALID_ARGUMENT
    +-- NotFound                 NOT_FOUND
    +-- FailedPrecondition       FAILED_PRECONDITION
    +-- ResourceExhausted        RESOURCE_EXHAUSTED
    +-- Unavailable              UNAVAILABLE

Each service derives its own errors from these. The interceptor sends a ``google.rpc.Status``
with one ``ErrorInfo`` (domain ``pbxmesh.io``) as rich details. Cancellation and deadlines pass
through untouched; any other exception becomes UNKNOWN with no text from the exception.
A request whose bytes do not decode as the method's message gets INVALID_ARGUMENT (reason
UNDECODABLE_REQUEST) and one log line, never a traceback.
"""

from __future__ import annotations

import contextvars
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, Protocol, cast

import grpc
import grpc.aio
from google.protobuf import any_pb2
from google.rpc import code_pb2, error_details_pb2, status_pb2
from grpc_status import rpc_status

ERROR_DOMAIN = "pbxmesh.io"

_log = logging.getLogger(__name__)


class ServiceError(Exception):
    """An error a client may see: its message must hold nothing secret."""

    code = grpc.StatusCode.INTERNAL
    reason = "INTERNAL"

    def __init__(self, message: str, *, reason: str | None = None, metadata: dict[str, str] | None = None):
        super().__init__(message)
        self.message = message
        if reason is not None:
            self.reason = reason
        self.metadata = metadata or {}

    def to_status(self) -> status_pb2.Status:
        info = error_details_pb2.ErrorInfo(reason=self.reason, domain=ERROR_DOMAIN, metadata=self.metadata)
        detail = any_pb2.Any()
        detail.Pack(info)
        return status_pb2.Status(code=_RPC_CODES[self.code], message=self.message, details=[detail])


class InvalidArgument(ServiceError):
    code = grpc.StatusCode.INVALID_ARGUMENT
    reason = "INVALID_ARGUMENT"


class NotFound(ServiceError):
    code = grpc.StatusCode.NOT_FOUND
    reason = "NOT_FOUND"


class FailedPrecondition(ServiceError):
    code = grpc.StatusCode.FAILED_PRECONDITION
    reason = "FAILED_PRECONDITION"


class ResourceExhausted(ServiceError):
    code = grpc.StatusCode.RESOURCE_EXHAUSTED
    reason = "RESOURCE_EXHAUSTED"


class Unavailable(ServiceError):
    code = grpc.StatusCode.UNAVAILABLE
    reason = "UNAVAILABLE"


class Unauthenticated(ServiceError):
    code = grpc.StatusCode.UNAUTHENTICATED
    reason = "UNAUTHENTICATED"


class PermissionDenied(ServiceError):
    code = grpc.StatusCode.PERMISSION_DENIED
    reason = "PERMISSION_DENIED"


_RPC_CODES = {
    grpc.StatusCode.INVALID_ARGUMENT: code_pb2.INVALID_ARGUMENT,
    grpc.StatusCode.NOT_FOUND: code_pb2.NOT_FOUND,
    grpc.StatusCode.FAILED_PRECONDITION: code_pb2.FAILED_PRECONDITION,
    grpc.StatusCode.RESOURCE_EXHAUSTED: code_pb2.RESOURCE_EXHAUSTED,
    grpc.StatusCode.UNAVAILABLE: code_pb2.UNAVAILABLE,
    grpc.StatusCode.UNAUTHENTICATED: code_pb2.UNAUTHENTICATED,
    grpc.StatusCode.PERMISSION_DENIED: code_pb2.PERMISSION_DENIED,
    grpc.StatusCode.INTERNAL: code_pb2.INTERNAL,
}


def error_info(error: grpc.aio.AioRpcError | grpc.RpcError) -> error_details_pb2.ErrorInfo | None:
    """Client side: the ErrorInfo a pbxmesh service attached to a failed call, if any."""
    status = rpc_status.from_call(error)
    if status is None:
        return None
    for detail in status.details:
        info = error_details_pb2.ErrorInfo()
        if detail.Is(info.DESCRIPTOR) and detail.Unpack(info):
            return info
    return None


async def _abort(context: grpc.aio.ServicerContext[Any, Any], exc: BaseException, method: str) -> None:
    if isinstance(exc, ServiceError):
        await context.abort_with_status(rpc_status.to_status(exc.to_status()))
    _log.exception("unexpected error in %s", method, exc_info=exc)
    await context.abort(grpc.StatusCode.UNKNOWN, "internal error")


class UndecodableRequest(InvalidArgument):
    reason = "UNDECODABLE_REQUEST"


class _Undecodable:
    """Stands for a request whose bytes did not decode: the handler refuses it."""

    __slots__ = ()


_UNDECODABLE = _Undecodable()


def _decoder(method: str, deserialize: Callable[[bytes], Any] | None) -> Callable[[bytes], Any] | None:
    """``deserialize`` that logs one line (no traceback) and returns a marker on bytes that do not
    decode; left alone, grpc logs a traceback per such request and sends the parser's text."""
    if deserialize is None:
        return None

    def decode(raw: bytes) -> Any:
        try:
            return deserialize(raw)
        except Exception as exc:
            _log.warning("undecodable request to %s (%d bytes): %s", method, len(raw), exc.__class__.__name__)
            return _UNDECODABLE

    return decode


def _check_decoded(request: Any) -> None:
    if request is _UNDECODABLE:
        raise UndecodableRequest("the request does not decode as the method's message")


async def _checked(requests: AsyncIterator[Any]) -> AsyncIterator[Any]:
    async for request in requests:
        _check_decoded(request)
        yield request


class Streams(Protocol):
    """What limits response streams (services/runtime/streams.py)."""

    def open(self, peer: str) -> Callable[[], None]: ...


class Guard(Protocol):
    """What checks who may call a method (services/runtime/access.py); raises a ServiceError."""

    def check(self, context: grpc.aio.ServicerContext[Any, Any], method: str) -> Any: ...


# The identity the guard found for the RPC being served, for the servicer (access.caller).
caller: contextvars.ContextVar[Any] = contextvars.ContextVar("caller", default=None)


class ErrorInterceptor(grpc.aio.ServerInterceptor):
    """Maps ServiceError (and anything unexpected) to a status with ErrorInfo details; refuses a
    request that does not decode (INVALID_ARGUMENT, one log line); admits every response stream
    through ``streams`` when given (RESOURCE_EXHAUSTED beyond its limits)."""

    def __init__(self, streams: Streams | None = None, guard: Guard | None = None) -> None:
        self.streams = streams
        self.guard = guard
        # The wrapped handler of each method, built once: this runs on every call.
        self._wrapped: dict[str, tuple[Any, grpc.RpcMethodHandler[Any, Any]]] = {}

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler[Any, Any] | None]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler[Any, Any] | None:
        handler: Any = await continuation(handler_call_details)
        if handler is None:
            return None
        method = handler_call_details.method
        cached = self._wrapped.get(method)
        if cached is not None and cached[0] is handler:
            return cached[1]
        wrapped = self._wrap(handler, method)
        self._wrapped[method] = (handler, wrapped)
        return wrapped

    def _authorize(self, context: grpc.aio.ServicerContext[Any, Any], method: str) -> None:
        if self.guard is not None:
            caller.set(self.guard.check(context, method))

    def _admit(self, context: grpc.aio.ServicerContext[Any, Any]) -> Callable[[], None]:
        if self.streams is None:
            return lambda: None
        release = self.streams.open(context.peer())
        # The generator's ``finally`` releases too; this covers an RPC that ends without it running.
        context.add_done_callback(cast(Any, lambda _: release()))
        return release

    def _wrap(self, handler: Any, method: str) -> grpc.RpcMethodHandler[Any, Any]:
        decode = _decoder(method, handler.request_deserializer)
        encode = handler.response_serializer
        if handler.unary_unary is not None:
            inner_unary = handler.unary_unary

            async def unary(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
                try:
                    self._authorize(context, method)
                    _check_decoded(request)
                    return await inner_unary(request, context)
                except (grpc.aio.AbortError, grpc.aio.UsageError):
                    raise
                except Exception as exc:
                    await _abort(context, exc, method)

            return grpc.unary_unary_rpc_method_handler(unary, decode, encode)
        if handler.stream_unary is not None:
            inner_client_stream = handler.stream_unary

            async def client_stream(requests: AsyncIterator[Any], context: grpc.aio.ServicerContext[Any, Any]) -> Any:
                try:
                    self._authorize(context, method)
                    return await inner_client_stream(_checked(requests), context)
                except (grpc.aio.AbortError, grpc.aio.UsageError):
                    raise
                except Exception as exc:
                    await _abort(context, exc, method)

            return grpc.stream_unary_rpc_method_handler(client_stream, decode, encode)
        if handler.unary_stream is not None:
            inner_stream = handler.unary_stream

            async def stream(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> AsyncIterator[Any]:
                release: Callable[[], None] | None = None
                try:
                    self._authorize(context, method)
                    _check_decoded(request)
                    release = self._admit(context)
                    async for item in inner_stream(request, context):
                        yield item
                except (grpc.aio.AbortError, grpc.aio.UsageError):
                    raise
                except Exception as exc:
                    await _abort(context, exc, method)
                finally:
                    if release is not None:
                        release()

            return grpc.unary_stream_rpc_method_handler(stream, decode, encode)
        if handler.stream_stream is not None:
            inner_bidi = handler.stream_stream

            async def bidi(
                requests: AsyncIterator[Any], context: grpc.aio.ServicerContext[Any, Any]
            ) -> AsyncIterator[Any]:
                release: Callable[[], None] | None = None
                try:
                    self._authorize(context, method)
                    release = self._admit(context)
                    async for item in inner_bidi(_checked(requests), context):
                        yield item
                except (grpc.aio.AbortError, grpc.aio.UsageError):
                    raise
                except Exception as exc:
                    await _abort(context, exc, method)
                finally:
                    if release is not None:
                        release()

            return grpc.stream_stream_rpc_method_handler(bidi, decode, encode)
        return cast("grpc.RpcMethodHandler[Any, Any]", handler)
