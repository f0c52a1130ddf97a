"""A grpc.aio interceptor counting every call by method and status code.

Unary calls are also timed. Streams (StreamIsActive, health Watch, reflection)
are counted when they end but not timed: their lifetime is how long KEDA keeps
them open, not how fast the scaler answers.
"""

from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import TYPE_CHECKING, Any, TypeAlias

import grpc

from scaler.service.metrics import ScalerMetrics

Context = grpc.aio.ServicerContext[Any, Any]


if TYPE_CHECKING:  # generic only in grpc-stubs, not at run time
    Handler: TypeAlias = grpc.RpcMethodHandler[Any, Any]
    Interceptor: TypeAlias = grpc.aio.ServerInterceptor[Any, Any]
else:
    Interceptor = grpc.aio.ServerInterceptor


class MetricsInterceptor(Interceptor):
    def __init__(self, metrics: ScalerMetrics) -> None:
        self._metrics = metrics
        # A method's handler never changes: wrap it once, not on every call.
        self._wrapped: dict[str, Handler] = {}

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[Handler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> Handler:
        path = handler_call_details.method
        wrapped = self._wrapped.get(path)
        if wrapped is None:
            handler = await continuation(handler_call_details)
            if handler is None:  # unknown method: gRPC answers UNIMPLEMENTED itself
                return handler
            wrapped = self._wrapped[path] = self._wrap(path, handler)
        return wrapped

    def _wrap(self, path: str, handler: Handler) -> Handler:
        service, _, method = path.lstrip("/").rpartition("/")
        calls = self._metrics.grpc_calls
        duration = self._metrics.grpc_call_duration.labels(service, method)

        def count(context: Context, error: BaseException | None) -> None:
            calls.labels(service, method, _status(context, error).name).inc()

        def awaited(behavior: Callable[..., Awaitable[Any]], *, timed: bool) -> Callable[..., Awaitable[Any]]:
            async def observed(request: Any, context: Context) -> Any:
                started = time.perf_counter()
                error: BaseException | None = None
                try:
                    return await behavior(request, context)
                except BaseException as raised:
                    error = raised
                    raise
                finally:
                    if timed:
                        duration.observe(time.perf_counter() - started)
                    count(context, error)

            return observed

        def streaming(behavior: Callable[..., Any]) -> Callable[..., Any]:
            if not inspect.isasyncgenfunction(behavior):
                # A coroutine that writes with context.write() (the health service's Watch).
                return awaited(behavior, timed=False)

            async def observed_generator(request: Any, context: Context) -> AsyncIterator[Any]:
                error: BaseException | None = None
                try:
                    async for response in behavior(request, context):
                        yield response
                except BaseException as raised:
                    error = raised
                    raise
                finally:
                    count(context, error)

            return observed_generator

        options = {
            "request_deserializer": handler.request_deserializer,
            "response_serializer": handler.response_serializer,
        }
        if handler.unary_unary:
            return grpc.unary_unary_rpc_method_handler(awaited(handler.unary_unary, timed=True), **options)
        if handler.stream_unary:
            return grpc.stream_unary_rpc_method_handler(awaited(handler.stream_unary, timed=True), **options)
        if handler.unary_stream:
            return grpc.unary_stream_rpc_method_handler(streaming(handler.unary_stream), **options)
        if handler.stream_stream:
            return grpc.stream_stream_rpc_method_handler(streaming(handler.stream_stream), **options)
        return handler


def _status(context: Context, error: BaseException | None) -> grpc.StatusCode:
    """The status the call ended with: what the handler set or aborted with, else from how it ended."""
    code = context.code()
    if isinstance(code, grpc.StatusCode):
        return code
    if isinstance(error, asyncio.CancelledError):
        return grpc.StatusCode.CANCELLED
    if error is not None:
        return grpc.StatusCode.UNKNOWN
    return grpc.StatusCode.OK
