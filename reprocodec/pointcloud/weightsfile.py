"""Point-cloud weights files read without torch.

The files are torch.save zip archives (networks.save_weights): a pickle (data.pkl) whose
tensors point at raw storages (data/<key>). A pickle can run any callable it names, so this
unpickler resolves only the globals torch.save writes for our blobs (the tensor rebuild
function, the numeric storage types, OrderedDict for the tensors' empty hook dicts) and reads
each storage's bytes from its zip entry after checking its size; tensors come back as numpy
arrays. Tests check the result against torch.load(weights_only=True) on every shipped file.
"""

from __future__ import annotations

import collections
import pickle
import zipfile
from typing import Any

import numpy as np

from .context import N_FEATURES
from .grid import ARCHITECTURE, LOGIT_LIMIT, LOGIT_STEP, grid_size

# torch storage type -> numpy dtype (little-endian, as the archive's byteorder must say)
_STORAGES: dict[str, np.dtype] = {
    "HalfStorage": np.dtype("<f2"), "FloatStorage": np.dtype("<f4"),
    "DoubleStorage": np.dtype("<f8"), "IntStorage": np.dtype("<i4"),
    "LongStorage": np.dtype("<i8"),
}
_MAX_PICKLE_BYTES = 1 << 20


class WeightsFileError(ValueError):
    """A weights file this reader will not load: malformed, crafted or not ours."""


class _StorageType:
    def __init__(self, dtype: np.dtype):
        self.dtype = dtype


def _rebuild_tensor(storage: np.ndarray, offset: int, size: tuple, stride: tuple,
                    requires_grad: bool = False, hooks: Any = None, metadata: Any = None
                    ) -> np.ndarray:
    """torch._utils._rebuild_tensor_v2 for numpy: a copy of the strided view, bounds checked."""
    del requires_grad, hooks, metadata
    size, stride = tuple(int(s) for s in size), tuple(int(s) for s in stride)
    if len(size) != len(stride) or any(s < 0 for s in size + stride) or offset < 0:
        raise WeightsFileError("weights file: a tensor has a malformed shape")
    if 0 in size:
        return np.zeros(size, storage.dtype)
    last = offset + sum((n - 1) * s for n, s in zip(size, stride, strict=True))
    if last >= storage.size:
        raise WeightsFileError("weights file: a tensor reaches past its storage")
    item = storage.dtype.itemsize
    view = np.lib.stride_tricks.as_strided(storage[offset:], size, [s * item for s in stride])
    return np.array(view)


class _Unpickler(pickle.Unpickler):
    def __init__(self, data: bytes, archive: zipfile.ZipFile, prefix: str):
        import io

        super().__init__(io.BytesIO(data))
        self.archive, self.prefix = archive, prefix
        self.storages: dict[str, np.ndarray] = {}

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) == ("torch._utils", "_rebuild_tensor_v2"):
            return _rebuild_tensor
        if (module, name) == ("collections", "OrderedDict"):
            return collections.OrderedDict
        if module == "torch" and name in _STORAGES:
            return _StorageType(_STORAGES[name])
        raise WeightsFileError(f"weights file: {module}.{name} is not allowed")

    def persistent_load(self, pid: Any) -> np.ndarray:
        if not (isinstance(pid, tuple) and len(pid) == 5 and pid[0] == "storage"
                and isinstance(pid[1], _StorageType) and isinstance(pid[2], str)
                and isinstance(pid[4], int)):
            raise WeightsFileError("weights file: unexpected persistent id")
        dtype, key, numel = pid[1].dtype, pid[2], pid[4]
        if key not in self.storages:
            info = self.archive.getinfo(f"{self.prefix}data/{key}")
            if numel < 0 or info.file_size != numel * dtype.itemsize:
                raise WeightsFileError(f"weights file: storage {key} has {info.file_size} "
                                       f"bytes, not {numel} x {dtype.itemsize}")
            self.storages[key] = np.frombuffer(self.archive.read(info), dtype=dtype)
        storage = self.storages[key]
        if storage.dtype != dtype or storage.size != numel:
            raise WeightsFileError(f"weights file: storage {key} is used with two types")
        return storage


def read_blob(path: str) -> dict[str, Any]:
    """The dict a torch.save archive holds, its tensors as numpy arrays; WeightsFileError for
    anything else, whatever part of the archive or pickle is wrong."""
    try:
        return _read_blob(path)
    except (WeightsFileError, OSError, MemoryError):
        raise  # ours, or the file system's (a missing file is not a malformed one)
    except Exception as exc:  # noqa: BLE001 - a crafted archive can fail anywhere in zipfile
        # or the unpickler (KeyError, TypeError, EOFError, ...): one error type for callers
        raise WeightsFileError(f"{path} is not a readable weights file: "
                               f"{type(exc).__name__}: {exc}") from exc


def _read_blob(path: str) -> dict[str, Any]:
    with zipfile.ZipFile(path) as archive:
        pickles = [n for n in archive.namelist() if n.endswith("/data.pkl")]
        if len(pickles) != 1:
            raise WeightsFileError(f"{path} is not a torch.save archive")
        prefix = pickles[0][:-len("data.pkl")]
        if f"{prefix}byteorder" in archive.namelist() and \
                archive.read(f"{prefix}byteorder") != b"little":
            raise WeightsFileError(f"{path} is not little-endian")
        info = archive.getinfo(pickles[0])
        if info.file_size > _MAX_PICKLE_BYTES:
            raise WeightsFileError(f"{path}: its pickle is too large for a weights file")
        blob = _Unpickler(archive.read(info), archive, prefix).load()
    if not isinstance(blob, dict):
        raise WeightsFileError(f"{path} does not hold a dict")
    return blob


def read_weights(path: str) -> tuple[dict[str, np.ndarray], np.ndarray, dict[str, Any]]:
    """(float32 state dict, int32 CDF table, the whole blob) of a point-cloud weights file,
    checked against this code's features and logit grid."""
    blob = read_blob(path)
    if blob.get("architecture") != ARCHITECTURE or blob.get("n_features") != N_FEATURES:
        raise WeightsFileError(f"{path} is not an {ARCHITECTURE} model with {N_FEATURES} "
                               "features")
    if blob.get("logit_step") != LOGIT_STEP or blob.get("logit_limit") != LOGIT_LIMIT:
        raise WeightsFileError(f"{path} uses another logit grid than this code")
    state_dict, table = blob.get("state_dict"), blob.get("cdf_table")
    if not isinstance(state_dict, dict) or not isinstance(table, np.ndarray) or not all(
            isinstance(k, str) and isinstance(v, np.ndarray) for k, v in state_dict.items()):
        raise WeightsFileError(f"{path} lacks a state dict of tensors and a CDF table")
    state = {k: np.asarray(v, np.float32) for k, v in state_dict.items()}
    table = table.astype(np.int32)
    if table.shape != (grid_size(), 4):
        raise WeightsFileError(f"{path} has a CDF table of shape {table.shape}")
    return state, table, blob
