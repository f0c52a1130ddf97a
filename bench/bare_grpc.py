"""A bare grpc.aio server with KEDA's ExternalScaler service and nothing of ours: the floor under 5b.

`python -m bench.bare_grpc PORT` serves StreamIsActive as one `false` and then silence, with the
same pending-call limits as `serve`, so that the restart storm can measure what gRPC itself costs
per open stream in this process model, apart from what the scaler adds.
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import AsyncIterator
from typing import Any

import grpc

from scaler._proto import externalscaler_pb2 as pb
from scaler._proto import externalscaler_pb2_grpc as pb_grpc
from scaler.rules.admission import Limits
from scaler.service.server import grpc_options


class Silent(pb_grpc.ExternalScalerServicer):
    def __init__(self) -> None:
        self.forever = asyncio.Event()

    async def StreamIsActive(
        self, request: pb.ScaledObjectRef, context: grpc.aio.ServicerContext[Any, Any]
    ) -> AsyncIterator[pb.IsActiveResponse]:
        yield pb.IsActiveResponse(result=False)
        await self.forever.wait()


async def main(port: int) -> None:
    server = grpc.aio.server(options=grpc_options(Limits()))
    # Only StreamIsActive: the other methods answer UNIMPLEMENTED (the generated base class).
    pb_grpc.add_ExternalScalerServicer_to_server(Silent(), server)  # type: ignore[abstract]
    server.add_insecure_port(f"127.0.0.1:{port}")
    await server.start()
    await server.wait_for_termination()


if __name__ == "__main__":
    asyncio.run(main(int(sys.argv[1])))
