from reprocodec.v1 import bitstream_pb2 as _bitstream_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class SafeguardLevel(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    SAFEGUARD_LEVEL_UNSPECIFIED: _ClassVar[SafeguardLevel]
    SAFEGUARD_LEVEL_DECODING: _ClassVar[SafeguardLevel]
    SAFEGUARD_LEVEL_RECONSTRUCTION: _ClassVar[SafeguardLevel]
    SAFEGUARD_LEVEL_BOTH: _ClassVar[SafeguardLevel]

class OutputFormat(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    OUTPUT_FORMAT_UNSPECIFIED: _ClassVar[OutputFormat]
    OUTPUT_FORMAT_ENCODED: _ClassVar[OutputFormat]
    OUTPUT_FORMAT_RAW: _ClassVar[OutputFormat]
SAFEGUARD_LEVEL_UNSPECIFIED: SafeguardLevel
SAFEGUARD_LEVEL_DECODING: SafeguardLevel
SAFEGUARD_LEVEL_RECONSTRUCTION: SafeguardLevel
SAFEGUARD_LEVEL_BOTH: SafeguardLevel
OUTPUT_FORMAT_UNSPECIFIED: OutputFormat
OUTPUT_FORMAT_ENCODED: OutputFormat
OUTPUT_FORMAT_RAW: OutputFormat

class RawImage(_message.Message):
    __slots__ = ("height", "width", "channels", "pixels")
    HEIGHT_FIELD_NUMBER: _ClassVar[int]
    WIDTH_FIELD_NUMBER: _ClassVar[int]
    CHANNELS_FIELD_NUMBER: _ClassVar[int]
    PIXELS_FIELD_NUMBER: _ClassVar[int]
    height: int
    width: int
    channels: int
    pixels: bytes
    def __init__(self, height: _Optional[int] = ..., width: _Optional[int] = ..., channels: _Optional[int] = ..., pixels: _Optional[bytes] = ...) -> None: ...

class PackedPoints(_message.Message):
    __slots__ = ("count", "xyz_float32", "xyz_int32")
    COUNT_FIELD_NUMBER: _ClassVar[int]
    XYZ_FLOAT32_FIELD_NUMBER: _ClassVar[int]
    XYZ_INT32_FIELD_NUMBER: _ClassVar[int]
    count: int
    xyz_float32: bytes
    xyz_int32: bytes
    def __init__(self, count: _Optional[int] = ..., xyz_float32: _Optional[bytes] = ..., xyz_int32: _Optional[bytes] = ...) -> None: ...

class EncodeImageRequest(_message.Message):
    __slots__ = ("image_file", "raw", "model", "quality", "safeguard_mode", "level")
    IMAGE_FILE_FIELD_NUMBER: _ClassVar[int]
    RAW_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    QUALITY_FIELD_NUMBER: _ClassVar[int]
    SAFEGUARD_MODE_FIELD_NUMBER: _ClassVar[int]
    LEVEL_FIELD_NUMBER: _ClassVar[int]
    image_file: bytes
    raw: RawImage
    model: str
    quality: int
    safeguard_mode: _bitstream_pb2.SafeguardMode
    level: SafeguardLevel
    def __init__(self, image_file: _Optional[bytes] = ..., raw: _Optional[_Union[RawImage, _Mapping]] = ..., model: _Optional[str] = ..., quality: _Optional[int] = ..., safeguard_mode: _Optional[_Union[_bitstream_pb2.SafeguardMode, str]] = ..., level: _Optional[_Union[SafeguardLevel, str]] = ...) -> None: ...

class EncodePointCloudRequest(_message.Message):
    __slots__ = ("ply", "points", "model", "depth", "safeguard_mode", "smallest", "max_format_version")
    PLY_FIELD_NUMBER: _ClassVar[int]
    POINTS_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    DEPTH_FIELD_NUMBER: _ClassVar[int]
    SAFEGUARD_MODE_FIELD_NUMBER: _ClassVar[int]
    SMALLEST_FIELD_NUMBER: _ClassVar[int]
    MAX_FORMAT_VERSION_FIELD_NUMBER: _ClassVar[int]
    ply: bytes
    points: PackedPoints
    model: str
    depth: int
    safeguard_mode: _bitstream_pb2.SafeguardMode
    smallest: bool
    max_format_version: int
    def __init__(self, ply: _Optional[bytes] = ..., points: _Optional[_Union[PackedPoints, _Mapping]] = ..., model: _Optional[str] = ..., depth: _Optional[int] = ..., safeguard_mode: _Optional[_Union[_bitstream_pb2.SafeguardMode, str]] = ..., smallest: _Optional[bool] = ..., max_format_version: _Optional[int] = ...) -> None: ...

class ProtectedTensorSummary(_message.Message):
    __slots__ = ("name", "level", "mode", "bound", "elements", "risky_count", "candidate_count", "protection_bytes")
    NAME_FIELD_NUMBER: _ClassVar[int]
    LEVEL_FIELD_NUMBER: _ClassVar[int]
    MODE_FIELD_NUMBER: _ClassVar[int]
    BOUND_FIELD_NUMBER: _ClassVar[int]
    ELEMENTS_FIELD_NUMBER: _ClassVar[int]
    RISKY_COUNT_FIELD_NUMBER: _ClassVar[int]
    CANDIDATE_COUNT_FIELD_NUMBER: _ClassVar[int]
    PROTECTION_BYTES_FIELD_NUMBER: _ClassVar[int]
    name: str
    level: _bitstream_pb2.ProtectionLevel
    mode: _bitstream_pb2.SafeguardMode
    bound: _bitstream_pb2.ErrorBound
    elements: int
    risky_count: int
    candidate_count: int
    protection_bytes: int
    def __init__(self, name: _Optional[str] = ..., level: _Optional[_Union[_bitstream_pb2.ProtectionLevel, str]] = ..., mode: _Optional[_Union[_bitstream_pb2.SafeguardMode, str]] = ..., bound: _Optional[_Union[_bitstream_pb2.ErrorBound, _Mapping]] = ..., elements: _Optional[int] = ..., risky_count: _Optional[int] = ..., candidate_count: _Optional[int] = ..., protection_bytes: _Optional[int] = ...) -> None: ...

class StreamStats(_message.Message):
    __slots__ = ("codec", "model", "payload_bytes", "protection_bytes", "container_bytes", "overhead_ratio", "num_elements", "bits_per_element", "mode", "tensors", "seconds", "profile")
    CODEC_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    PAYLOAD_BYTES_FIELD_NUMBER: _ClassVar[int]
    PROTECTION_BYTES_FIELD_NUMBER: _ClassVar[int]
    CONTAINER_BYTES_FIELD_NUMBER: _ClassVar[int]
    OVERHEAD_RATIO_FIELD_NUMBER: _ClassVar[int]
    NUM_ELEMENTS_FIELD_NUMBER: _ClassVar[int]
    BITS_PER_ELEMENT_FIELD_NUMBER: _ClassVar[int]
    MODE_FIELD_NUMBER: _ClassVar[int]
    TENSORS_FIELD_NUMBER: _ClassVar[int]
    SECONDS_FIELD_NUMBER: _ClassVar[int]
    PROFILE_FIELD_NUMBER: _ClassVar[int]
    codec: _bitstream_pb2.CodecKind
    model: str
    payload_bytes: int
    protection_bytes: int
    container_bytes: int
    overhead_ratio: float
    num_elements: int
    bits_per_element: float
    mode: _bitstream_pb2.SafeguardMode
    tensors: _containers.RepeatedCompositeFieldContainer[ProtectedTensorSummary]
    seconds: float
    profile: str
    def __init__(self, codec: _Optional[_Union[_bitstream_pb2.CodecKind, str]] = ..., model: _Optional[str] = ..., payload_bytes: _Optional[int] = ..., protection_bytes: _Optional[int] = ..., container_bytes: _Optional[int] = ..., overhead_ratio: _Optional[float] = ..., num_elements: _Optional[int] = ..., bits_per_element: _Optional[float] = ..., mode: _Optional[_Union[_bitstream_pb2.SafeguardMode, str]] = ..., tensors: _Optional[_Iterable[_Union[ProtectedTensorSummary, _Mapping]]] = ..., seconds: _Optional[float] = ..., profile: _Optional[str] = ...) -> None: ...

class EncodeResponse(_message.Message):
    __slots__ = ("bitstream", "stats")
    BITSTREAM_FIELD_NUMBER: _ClassVar[int]
    STATS_FIELD_NUMBER: _ClassVar[int]
    bitstream: _bitstream_pb2.Bitstream
    stats: StreamStats
    def __init__(self, bitstream: _Optional[_Union[_bitstream_pb2.Bitstream, _Mapping]] = ..., stats: _Optional[_Union[StreamStats, _Mapping]] = ...) -> None: ...

class DecodeRequest(_message.Message):
    __slots__ = ("container", "bitstream", "output_format")
    CONTAINER_FIELD_NUMBER: _ClassVar[int]
    BITSTREAM_FIELD_NUMBER: _ClassVar[int]
    OUTPUT_FORMAT_FIELD_NUMBER: _ClassVar[int]
    container: bytes
    bitstream: _bitstream_pb2.Bitstream
    output_format: OutputFormat
    def __init__(self, container: _Optional[bytes] = ..., bitstream: _Optional[_Union[_bitstream_pb2.Bitstream, _Mapping]] = ..., output_format: _Optional[_Union[OutputFormat, str]] = ...) -> None: ...

class DecodeImageResponse(_message.Message):
    __slots__ = ("png", "raw", "bit_exact", "output_checksum", "expected_checksum", "stats", "height", "width", "channels")
    PNG_FIELD_NUMBER: _ClassVar[int]
    RAW_FIELD_NUMBER: _ClassVar[int]
    BIT_EXACT_FIELD_NUMBER: _ClassVar[int]
    OUTPUT_CHECKSUM_FIELD_NUMBER: _ClassVar[int]
    EXPECTED_CHECKSUM_FIELD_NUMBER: _ClassVar[int]
    STATS_FIELD_NUMBER: _ClassVar[int]
    HEIGHT_FIELD_NUMBER: _ClassVar[int]
    WIDTH_FIELD_NUMBER: _ClassVar[int]
    CHANNELS_FIELD_NUMBER: _ClassVar[int]
    png: bytes
    raw: RawImage
    bit_exact: bool
    output_checksum: int
    expected_checksum: int
    stats: StreamStats
    height: int
    width: int
    channels: int
    def __init__(self, png: _Optional[bytes] = ..., raw: _Optional[_Union[RawImage, _Mapping]] = ..., bit_exact: _Optional[bool] = ..., output_checksum: _Optional[int] = ..., expected_checksum: _Optional[int] = ..., stats: _Optional[_Union[StreamStats, _Mapping]] = ..., height: _Optional[int] = ..., width: _Optional[int] = ..., channels: _Optional[int] = ...) -> None: ...

class DecodePointCloudResponse(_message.Message):
    __slots__ = ("ply", "points", "bit_exact", "output_checksum", "expected_checksum", "stats")
    PLY_FIELD_NUMBER: _ClassVar[int]
    POINTS_FIELD_NUMBER: _ClassVar[int]
    BIT_EXACT_FIELD_NUMBER: _ClassVar[int]
    OUTPUT_CHECKSUM_FIELD_NUMBER: _ClassVar[int]
    EXPECTED_CHECKSUM_FIELD_NUMBER: _ClassVar[int]
    STATS_FIELD_NUMBER: _ClassVar[int]
    ply: bytes
    points: PackedPoints
    bit_exact: bool
    output_checksum: int
    expected_checksum: int
    stats: StreamStats
    def __init__(self, ply: _Optional[bytes] = ..., points: _Optional[_Union[PackedPoints, _Mapping]] = ..., bit_exact: _Optional[bool] = ..., output_checksum: _Optional[int] = ..., expected_checksum: _Optional[int] = ..., stats: _Optional[_Union[StreamStats, _Mapping]] = ...) -> None: ...

class Chunk(_message.Message):
    __slots__ = ("data", "total_bytes")
    DATA_FIELD_NUMBER: _ClassVar[int]
    TOTAL_BYTES_FIELD_NUMBER: _ClassVar[int]
    data: bytes
    total_bytes: int
    def __init__(self, data: _Optional[bytes] = ..., total_bytes: _Optional[int] = ...) -> None: ...

class ListModelsRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ModelBound(_message.Message):
    __slots__ = ("tensor", "bound")
    TENSOR_FIELD_NUMBER: _ClassVar[int]
    BOUND_FIELD_NUMBER: _ClassVar[int]
    tensor: str
    bound: _bitstream_pb2.ErrorBound
    def __init__(self, tensor: _Optional[str] = ..., bound: _Optional[_Union[_bitstream_pb2.ErrorBound, _Mapping]] = ...) -> None: ...

class ModelInfo(_message.Message):
    __slots__ = ("name", "codec", "architecture", "quality", "weights_sha256", "bounds", "modes", "is_default", "loaded", "calibrated_profiles", "format_version")
    NAME_FIELD_NUMBER: _ClassVar[int]
    CODEC_FIELD_NUMBER: _ClassVar[int]
    ARCHITECTURE_FIELD_NUMBER: _ClassVar[int]
    QUALITY_FIELD_NUMBER: _ClassVar[int]
    WEIGHTS_SHA256_FIELD_NUMBER: _ClassVar[int]
    BOUNDS_FIELD_NUMBER: _ClassVar[int]
    MODES_FIELD_NUMBER: _ClassVar[int]
    IS_DEFAULT_FIELD_NUMBER: _ClassVar[int]
    LOADED_FIELD_NUMBER: _ClassVar[int]
    CALIBRATED_PROFILES_FIELD_NUMBER: _ClassVar[int]
    FORMAT_VERSION_FIELD_NUMBER: _ClassVar[int]
    name: str
    codec: _bitstream_pb2.CodecKind
    architecture: str
    quality: int
    weights_sha256: bytes
    bounds: _containers.RepeatedCompositeFieldContainer[ModelBound]
    modes: _containers.RepeatedScalarFieldContainer[_bitstream_pb2.SafeguardMode]
    is_default: bool
    loaded: bool
    calibrated_profiles: _containers.RepeatedScalarFieldContainer[str]
    format_version: int
    def __init__(self, name: _Optional[str] = ..., codec: _Optional[_Union[_bitstream_pb2.CodecKind, str]] = ..., architecture: _Optional[str] = ..., quality: _Optional[int] = ..., weights_sha256: _Optional[bytes] = ..., bounds: _Optional[_Iterable[_Union[ModelBound, _Mapping]]] = ..., modes: _Optional[_Iterable[_Union[_bitstream_pb2.SafeguardMode, str]]] = ..., is_default: _Optional[bool] = ..., loaded: _Optional[bool] = ..., calibrated_profiles: _Optional[_Iterable[str]] = ..., format_version: _Optional[int] = ...) -> None: ...

class ListModelsResponse(_message.Message):
    __slots__ = ("models",)
    MODELS_FIELD_NUMBER: _ClassVar[int]
    models: _containers.RepeatedCompositeFieldContainer[ModelInfo]
    def __init__(self, models: _Optional[_Iterable[_Union[ModelInfo, _Mapping]]] = ...) -> None: ...

class ServerInfoRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ServerInfo(_message.Message):
    __slots__ = ("service", "version", "profile", "device", "torch_version", "max_message_bytes", "max_concurrency", "tls", "auth", "device_name", "format_version")
    SERVICE_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    PROFILE_FIELD_NUMBER: _ClassVar[int]
    DEVICE_FIELD_NUMBER: _ClassVar[int]
    TORCH_VERSION_FIELD_NUMBER: _ClassVar[int]
    MAX_MESSAGE_BYTES_FIELD_NUMBER: _ClassVar[int]
    MAX_CONCURRENCY_FIELD_NUMBER: _ClassVar[int]
    TLS_FIELD_NUMBER: _ClassVar[int]
    AUTH_FIELD_NUMBER: _ClassVar[int]
    DEVICE_NAME_FIELD_NUMBER: _ClassVar[int]
    FORMAT_VERSION_FIELD_NUMBER: _ClassVar[int]
    service: str
    version: str
    profile: str
    device: str
    torch_version: str
    max_message_bytes: int
    max_concurrency: int
    tls: bool
    auth: bool
    device_name: str
    format_version: int
    def __init__(self, service: _Optional[str] = ..., version: _Optional[str] = ..., profile: _Optional[str] = ..., device: _Optional[str] = ..., torch_version: _Optional[str] = ..., max_message_bytes: _Optional[int] = ..., max_concurrency: _Optional[int] = ..., tls: _Optional[bool] = ..., auth: _Optional[bool] = ..., device_name: _Optional[str] = ..., format_version: _Optional[int] = ...) -> None: ...
