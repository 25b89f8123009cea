"""A no-op grpc.aio ext_proc server: the floor any Python ext_proc pays for the same messages.

    python bench/noop_extproc.py PORT [--duplex]

It answers CONTINUE to every phase Envoy sends, so with extproc's rendered filter config it
gets the same 4 messages per JSON chat request and does no work for them. With `--duplex` it
switches SSE responses to FULL_DUPLEX_STREAMED and echoes every chunk, as extproc does: the
floor of per-chunk cost for a Python ext_proc that can stop a stream.
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import AsyncIterator

import grpc
from envoy.extensions.filters.http.ext_proc.v3 import processing_mode_pb2
from envoy.service.ext_proc.v3 import external_processor_pb2 as pb
from envoy.service.ext_proc.v3 import external_processor_pb2_grpc as pb_grpc

_CONTINUE = {
    "request_headers": pb.ProcessingResponse(request_headers=pb.HeadersResponse()),
    "request_body": pb.ProcessingResponse(request_body=pb.BodyResponse()),
    "response_headers": pb.ProcessingResponse(response_headers=pb.HeadersResponse()),
    "response_body": pb.ProcessingResponse(response_body=pb.BodyResponse()),
}


_M = processing_mode_pb2.ProcessingMode
_DUPLEX = pb.ProcessingResponse(
    response_headers=pb.HeadersResponse(),
    mode_override=_M(
        request_header_mode=_M.SEND,
        response_header_mode=_M.SEND,
        request_body_mode=_M.NONE,
        response_body_mode=_M.FULL_DUPLEX_STREAMED,
        request_trailer_mode=_M.SKIP,
        response_trailer_mode=_M.SEND,
    ),
)


def _echo(body: pb.HttpBody) -> pb.ProcessingResponse:
    streamed = pb.StreamedBodyResponse(body=body.body, end_of_stream=body.end_of_stream)
    mutation = pb.BodyMutation(streamed_response=streamed)
    return pb.ProcessingResponse(
        response_body=pb.BodyResponse(response=pb.CommonResponse(body_mutation=mutation))
    )


class NoopProcessor(pb_grpc.ExternalProcessorServicer):  # type: ignore[misc]
    """CONTINUE for every message (echo for SSE in duplex mode)."""

    def __init__(self, duplex: bool) -> None:
        self.duplex = duplex

    async def Process(
        self, request_iterator: AsyncIterator[pb.ProcessingRequest], context: object
    ) -> AsyncIterator[pb.ProcessingResponse]:
        """Answer each phase message with an empty CONTINUE."""
        streaming = False
        async for request in request_iterator:
            phase = request.WhichOneof("request")
            if self.duplex and phase == "response_headers":
                for h in request.response_headers.headers.headers:
                    if h.key == "content-type" and b"event-stream" in h.raw_value:
                        streaming = True
                if streaming:
                    yield _DUPLEX
                    continue
            if streaming and phase == "response_body":
                yield _echo(request.response_body)
            elif phase == "response_trailers":
                yield pb.ProcessingResponse(response_trailers=pb.TrailersResponse())
            elif phase in _CONTINUE:
                yield _CONTINUE[phase]


async def main(port: int, duplex: bool) -> None:
    """Serve until killed."""
    server = grpc.aio.server()
    pb_grpc.add_ExternalProcessorServicer_to_server(NoopProcessor(duplex), server)
    server.add_insecure_port(f"127.0.0.1:{port}")
    await server.start()
    print(f"noop ext_proc on 127.0.0.1:{port}", flush=True)
    await server.wait_for_termination()


if __name__ == "__main__":
    asyncio.run(main(int(sys.argv[1]), "--duplex" in sys.argv[2:]))
