"""A no-op grpc.aio ext_proc server: the floor any Python ext_proc pays for the same messages.

    python bench/noop_extproc.py PORT

It answers CONTINUE to every phase Envoy sends, so with extproc's rendered filter config it
gets the same 4 messages per JSON chat request and does no work for them.
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import AsyncIterator

import grpc
from envoy.service.ext_proc.v3 import external_processor_pb2 as pb
from envoy.service.ext_proc.v3 import external_processor_pb2_grpc as pb_grpc

_CONTINUE = {
    "request_headers": pb.ProcessingResponse(request_headers=pb.HeadersResponse()),
    "request_body": pb.ProcessingResponse(request_body=pb.BodyResponse()),
    "response_headers": pb.ProcessingResponse(response_headers=pb.HeadersResponse()),
    "response_body": pb.ProcessingResponse(response_body=pb.BodyResponse()),
}


class NoopProcessor(pb_grpc.ExternalProcessorServicer):  # type: ignore[misc]
    """CONTINUE for every message."""

    async def Process(
        self, request_iterator: AsyncIterator[pb.ProcessingRequest], context: object
    ) -> AsyncIterator[pb.ProcessingResponse]:
        """Answer each phase message with an empty CONTINUE."""
        async for request in request_iterator:
            phase = request.WhichOneof("request")
            if phase in _CONTINUE:
                yield _CONTINUE[phase]


async def main(port: int) -> None:
    """Serve until killed."""
    server = grpc.aio.server()
    pb_grpc.add_ExternalProcessorServicer_to_server(NoopProcessor(), server)
    server.add_insecure_port(f"127.0.0.1:{port}")
    await server.start()
    print(f"noop ext_proc on 127.0.0.1:{port}", flush=True)
    await server.wait_for_termination()


if __name__ == "__main__":
    asyncio.run(main(int(sys.argv[1])))
