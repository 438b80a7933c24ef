"""Size and safeguard statistics of a `Bitstream`, computed from its fields alone.

Used by both services (response stats, metrics) and the client (roundtrip report), so what the
encoder reports and what the decoder reports come from one definition.
"""

from __future__ import annotations

import math

from reprocodec.v1 import bitstream_pb2, service_pb2


def stream_stats(msg: bitstream_pb2.Bitstream, profile: str = "",
                 seconds: float = 0.0) -> service_pb2.StreamStats:
    payload_bytes = sum(len(p.data) for p in msg.payloads)
    tensors = [
        service_pb2.ProtectedTensorSummary(
            name=t.name, level=t.level, mode=t.mode, bound=t.bound,
            elements=math.prod(t.shape) if t.shape else 0,
            risky_count=t.risky_count, candidate_count=t.candidate_count,
            protection_bytes=len(t.side_info),
        )
        for t in msg.protected
    ]
    protection_bytes = sum(t.protection_bytes for t in tensors)
    kind = msg.WhichOneof("header")
    if kind == "image":
        elements = msg.image.height * msg.image.width
    elif kind == "point_cloud":
        elements = msg.point_cloud.num_points
    else:
        elements = 0
    container_bytes = msg.ByteSize()
    # The stream's mode: the one its protected tensors use. Tensors of a level that was not
    # asked for are carried in mode NONE; a stream with no other mode is NONE.
    modes = {t.mode for t in msg.protected} - {bitstream_pb2.SAFEGUARD_MODE_NONE}
    mode = modes.pop() if len(modes) == 1 else (
        bitstream_pb2.SAFEGUARD_MODE_NONE if not modes else bitstream_pb2.SAFEGUARD_MODE_UNSPECIFIED
    )
    return service_pb2.StreamStats(
        codec=msg.codec, model=msg.model,
        payload_bytes=payload_bytes, protection_bytes=protection_bytes,
        container_bytes=container_bytes,
        overhead_ratio=protection_bytes / payload_bytes if payload_bytes else 0.0,
        num_elements=elements,
        bits_per_element=8.0 * container_bytes / elements if elements else 0.0,
        mode=mode, tensors=tensors, seconds=seconds, profile=profile,
    )
