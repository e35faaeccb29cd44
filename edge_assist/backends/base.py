"""The InferenceBackend protocol shared by ONNX Runtime and TensorRT."""

from __future__ import annotations

import abc
from dataclasses import dataclass

import numpy as np

from edge_assist.errors import BackendError


@dataclass(frozen=True)
class TensorSpec:
    name: str
    shape: tuple[int | None, ...]  # None for a dynamic dimension
    dtype: np.dtype

    def describe(self) -> str:
        dims = "x".join("?" if d is None else str(d) for d in self.shape)
        return f"{self.name}[{dims}] {np.dtype(self.dtype).name}"


@dataclass(frozen=True)
class BackendStatus:
    name: str
    available: bool
    reason: str  # why it is (or is not) usable here
    devices: tuple[str, ...] = ()


class InferenceBackend(abc.ABC):
    """One model, ready to run. Open as a context manager; close() frees it."""

    name: str = "?"
    inputs: list[TensorSpec]
    outputs: list[TensorSpec]
    # CPU threads one run keeps busy when the backend computes on the CPU and
    # may run beside another model's session (the pipeline then runs heads
    # concurrently); None: keep its runs sequential (GPU backends, unknown).
    cpu_threads: int | None = None
    # The (name, dtype, shape) signature of the last feed that passed
    # check_feed: a feed with the same signature needs no second check.
    _checked: tuple | None = None

    @abc.abstractmethod
    def _run(self, feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]: ...

    def infer(self, feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        # check_feed looks only at the names, types, dtypes and shapes: a feed
        # with the signature of the last one that passed is checked already.
        sig = feed_signature(feed)
        if sig is None or sig != self._checked:
            check_feed(self.inputs, feed, self.model_name)
            self._checked = sig
        return self._run(feed)

    def close(self) -> None:  # pragma: no cover - trivial default
        pass

    @property
    def model_name(self) -> str:
        return getattr(self, "_model_name", "model")

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def feed_signature(feed) -> tuple | None:
    """(name, dtype, shape) of each input, in order; None when the feed is not
    a dict of plain numpy arrays (such a feed is always checked in full)."""
    if type(feed) is not dict:
        return None
    sig = []
    for name, arr in feed.items():
        if type(arr) is not np.ndarray:
            return None
        sig.append((name, arr.dtype, arr.shape))
    return tuple(sig)


def check_feed(specs: list[TensorSpec], feed: dict[str, np.ndarray], model: str) -> None:
    """Raise a one-line BackendError when a feed does not fit the model."""
    want = {s.name: s for s in specs}
    missing = sorted(set(want) - set(feed))
    extra = sorted(set(feed) - set(want))
    if missing or extra:
        raise BackendError(
            f"{model}: inputs {sorted(feed)} do not match the model's "
            f"{[s.describe() for s in specs]} (missing {missing}, unexpected {extra})"
        )
    for name, spec in want.items():
        arr = feed[name]
        if not isinstance(arr, np.ndarray):
            raise BackendError(f"{model}: input {name!r} must be a numpy array, got {type(arr).__name__}")
        if arr.dtype != spec.dtype:
            raise BackendError(f"{model}: input {name!r} has dtype {arr.dtype}, the model wants {np.dtype(spec.dtype).name}")
        if len(arr.shape) != len(spec.shape) or any(
            d is not None and d != a for d, a in zip(spec.shape, arr.shape)
        ):
            raise BackendError(f"{model}: input {name!r} has shape {tuple(arr.shape)}, the model wants {spec.describe()}")
