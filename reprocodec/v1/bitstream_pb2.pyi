from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class CodecKind(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    CODEC_KIND_UNSPECIFIED: _ClassVar[CodecKind]
    CODEC_KIND_IMAGE: _ClassVar[CodecKind]
    CODEC_KIND_POINT_CLOUD: _ClassVar[CodecKind]

class SafeguardMode(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    SAFEGUARD_MODE_UNSPECIFIED: _ClassVar[SafeguardMode]
    SAFEGUARD_MODE_NONE: _ClassVar[SafeguardMode]
    SAFEGUARD_MODE_FLAGS: _ClassVar[SafeguardMode]
    SAFEGUARD_MODE_SIMPLIFIED: _ClassVar[SafeguardMode]
    SAFEGUARD_MODE_SYNDROME: _ClassVar[SafeguardMode]

class BoundKind(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    BOUND_KIND_UNSPECIFIED: _ClassVar[BoundKind]
    BOUND_KIND_ABSOLUTE: _ClassVar[BoundKind]
    BOUND_KIND_RELATIVE: _ClassVar[BoundKind]

class ProtectionLevel(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    PROTECTION_LEVEL_UNSPECIFIED: _ClassVar[ProtectionLevel]
    PROTECTION_LEVEL_DECODING: _ClassVar[ProtectionLevel]
    PROTECTION_LEVEL_RECONSTRUCTION: _ClassVar[ProtectionLevel]
CODEC_KIND_UNSPECIFIED: CodecKind
CODEC_KIND_IMAGE: CodecKind
CODEC_KIND_POINT_CLOUD: CodecKind
SAFEGUARD_MODE_UNSPECIFIED: SafeguardMode
SAFEGUARD_MODE_NONE: SafeguardMode
SAFEGUARD_MODE_FLAGS: SafeguardMode
SAFEGUARD_MODE_SIMPLIFIED: SafeguardMode
SAFEGUARD_MODE_SYNDROME: SafeguardMode
BOUND_KIND_UNSPECIFIED: BoundKind
BOUND_KIND_ABSOLUTE: BoundKind
BOUND_KIND_RELATIVE: BoundKind
PROTECTION_LEVEL_UNSPECIFIED: ProtectionLevel
PROTECTION_LEVEL_DECODING: ProtectionLevel
PROTECTION_LEVEL_RECONSTRUCTION: ProtectionLevel

class ErrorBound(_message.Message):
    __slots__ = ("kind", "value")
    KIND_FIELD_NUMBER: _ClassVar[int]
    VALUE_FIELD_NUMBER: _ClassVar[int]
    kind: BoundKind
    value: float
    def __init__(self, kind: _Optional[_Union[BoundKind, str]] = ..., value: _Optional[float] = ...) -> None: ...

class ProtectedTensor(_message.Message):
    __slots__ = ("name", "level", "mode", "bound", "shape", "side_info", "side_info_crc32", "indices_checksum", "risky_count", "candidate_count")
    NAME_FIELD_NUMBER: _ClassVar[int]
    LEVEL_FIELD_NUMBER: _ClassVar[int]
    MODE_FIELD_NUMBER: _ClassVar[int]
    BOUND_FIELD_NUMBER: _ClassVar[int]
    SHAPE_FIELD_NUMBER: _ClassVar[int]
    SIDE_INFO_FIELD_NUMBER: _ClassVar[int]
    SIDE_INFO_CRC32_FIELD_NUMBER: _ClassVar[int]
    INDICES_CHECKSUM_FIELD_NUMBER: _ClassVar[int]
    RISKY_COUNT_FIELD_NUMBER: _ClassVar[int]
    CANDIDATE_COUNT_FIELD_NUMBER: _ClassVar[int]
    name: str
    level: ProtectionLevel
    mode: SafeguardMode
    bound: ErrorBound
    shape: _containers.RepeatedScalarFieldContainer[int]
    side_info: bytes
    side_info_crc32: int
    indices_checksum: int
    risky_count: int
    candidate_count: int
    def __init__(self, name: _Optional[str] = ..., level: _Optional[_Union[ProtectionLevel, str]] = ..., mode: _Optional[_Union[SafeguardMode, str]] = ..., bound: _Optional[_Union[ErrorBound, _Mapping]] = ..., shape: _Optional[_Iterable[int]] = ..., side_info: _Optional[bytes] = ..., side_info_crc32: _Optional[int] = ..., indices_checksum: _Optional[int] = ..., risky_count: _Optional[int] = ..., candidate_count: _Optional[int] = ...) -> None: ...

class Payload(_message.Message):
    __slots__ = ("name", "shape", "data", "crc32", "symbols_checksum")
    NAME_FIELD_NUMBER: _ClassVar[int]
    SHAPE_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    CRC32_FIELD_NUMBER: _ClassVar[int]
    SYMBOLS_CHECKSUM_FIELD_NUMBER: _ClassVar[int]
    name: str
    shape: _containers.RepeatedScalarFieldContainer[int]
    data: bytes
    crc32: int
    symbols_checksum: int
    def __init__(self, name: _Optional[str] = ..., shape: _Optional[_Iterable[int]] = ..., data: _Optional[bytes] = ..., crc32: _Optional[int] = ..., symbols_checksum: _Optional[int] = ...) -> None: ...

class ImageHeader(_message.Message):
    __slots__ = ("height", "width", "channels")
    HEIGHT_FIELD_NUMBER: _ClassVar[int]
    WIDTH_FIELD_NUMBER: _ClassVar[int]
    CHANNELS_FIELD_NUMBER: _ClassVar[int]
    height: int
    width: int
    channels: int
    def __init__(self, height: _Optional[int] = ..., width: _Optional[int] = ..., channels: _Optional[int] = ...) -> None: ...

class PointCloudHeader(_message.Message):
    __slots__ = ("depth", "num_points", "origin", "scale", "checksum")
    DEPTH_FIELD_NUMBER: _ClassVar[int]
    NUM_POINTS_FIELD_NUMBER: _ClassVar[int]
    ORIGIN_FIELD_NUMBER: _ClassVar[int]
    SCALE_FIELD_NUMBER: _ClassVar[int]
    CHECKSUM_FIELD_NUMBER: _ClassVar[int]
    depth: int
    num_points: int
    origin: _containers.RepeatedScalarFieldContainer[float]
    scale: float
    checksum: int
    def __init__(self, depth: _Optional[int] = ..., num_points: _Optional[int] = ..., origin: _Optional[_Iterable[float]] = ..., scale: _Optional[float] = ..., checksum: _Optional[int] = ...) -> None: ...

class Bitstream(_message.Message):
    __slots__ = ("magic", "format_version", "codec", "model", "weights_sha256", "image", "point_cloud", "payloads", "protected", "output_checksum", "encoder_profile")
    MAGIC_FIELD_NUMBER: _ClassVar[int]
    FORMAT_VERSION_FIELD_NUMBER: _ClassVar[int]
    CODEC_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    WEIGHTS_SHA256_FIELD_NUMBER: _ClassVar[int]
    IMAGE_FIELD_NUMBER: _ClassVar[int]
    POINT_CLOUD_FIELD_NUMBER: _ClassVar[int]
    PAYLOADS_FIELD_NUMBER: _ClassVar[int]
    PROTECTED_FIELD_NUMBER: _ClassVar[int]
    OUTPUT_CHECKSUM_FIELD_NUMBER: _ClassVar[int]
    ENCODER_PROFILE_FIELD_NUMBER: _ClassVar[int]
    magic: int
    format_version: int
    codec: CodecKind
    model: str
    weights_sha256: bytes
    image: ImageHeader
    point_cloud: PointCloudHeader
    payloads: _containers.RepeatedCompositeFieldContainer[Payload]
    protected: _containers.RepeatedCompositeFieldContainer[ProtectedTensor]
    output_checksum: int
    encoder_profile: str
    def __init__(self, magic: _Optional[int] = ..., format_version: _Optional[int] = ..., codec: _Optional[_Union[CodecKind, str]] = ..., model: _Optional[str] = ..., weights_sha256: _Optional[bytes] = ..., image: _Optional[_Union[ImageHeader, _Mapping]] = ..., point_cloud: _Optional[_Union[PointCloudHeader, _Mapping]] = ..., payloads: _Optional[_Iterable[_Union[Payload, _Mapping]]] = ..., protected: _Optional[_Iterable[_Union[ProtectedTensor, _Mapping]]] = ..., output_checksum: _Optional[int] = ..., encoder_profile: _Optional[str] = ...) -> None: ...
