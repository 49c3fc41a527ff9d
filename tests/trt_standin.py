"""A recording STAND-IN for the `tensorrt` module.

It is NOT TensorRT and builds nothing: it records what clip-export asks of the TensorRT 10/11
Python API (network flags, profiles, workspace, timing cache, builder flags) and lets tests force
the failure paths. Passing tests here are never evidence that a real engine works.
"""

from __future__ import annotations

import enum
import types
from typing import Any


class StandInTensorRT(types.ModuleType):
    def __init__(self, version: str = "10.13.0", parse_ok: bool = True, plan: bytes | None = b"STAND-IN-PLAN") -> None:
        super().__init__("tensorrt")
        self.__version__ = version
        self.calls: list[tuple[str, Any]] = []
        self.parse_ok = parse_ok
        self.plan = plan
        major = int(version.split(".")[0])
        self.Logger = _Logger
        self.MemoryPoolType = enum.Enum("MemoryPoolType", "WORKSPACE")
        self.TensorIOMode = enum.Enum("TensorIOMode", "INPUT OUTPUT")
        if major >= 11:
            self.BuilderFlag = enum.IntEnum("BuilderFlag", "TF32 REFIT")  # FP16/INT8 removed in 11
            self.NetworkDefinitionCreationFlag = enum.IntEnum(
                "NetworkDefinitionCreationFlag", "PREFER_JIT_PYTHON_PLUGINS"
            )
        else:
            self.BuilderFlag = enum.IntEnum("BuilderFlag", "FP16 INT8 TF32 OBEY_PRECISION_CONSTRAINTS")
            self.NetworkDefinitionCreationFlag = enum.IntEnum(
                "NetworkDefinitionCreationFlag", "EXPLICIT_BATCH STRONGLY_TYPED", start=0
            )
        recorder = self

        class Builder:
            def __init__(self, logger: Any) -> None:
                recorder.calls.append(("Builder", None))

            def create_network(self, flags: int) -> Any:
                recorder.calls.append(("create_network", flags))
                return object()

            def create_builder_config(self) -> Any:
                return _Config(recorder)

            def create_optimization_profile(self) -> Any:
                return _Profile(recorder)

            def build_serialized_network(self, network: Any, config: Any) -> Any:
                recorder.calls.append(("build_serialized_network", None))
                return recorder.plan

        class OnnxParser:
            def __init__(self, network: Any, logger: Any) -> None:
                self.num_errors = 0

            def parse_from_file(self, path: str) -> bool:
                recorder.calls.append(("parse_from_file", path))
                if not recorder.parse_ok:
                    self.num_errors = 1
                return recorder.parse_ok

            def get_error(self, index: int) -> Any:
                return types.SimpleNamespace(desc=lambda: "stand-in parser error: unsupported node ArgMax")

        self.Builder = Builder
        self.OnnxParser = OnnxParser

    def recorded(self, name: str) -> list[Any]:
        return [value for call, value in self.calls if call == name]


class _Logger:
    WARNING = 2

    def __init__(self, severity: int) -> None:
        self.severity = severity


class _TimingCache:
    def __init__(self, data: bytes) -> None:
        self.data = data

    def serialize(self) -> bytes:
        return b"STAND-IN-TIMING-CACHE:" + self.data


class _Config:
    def __init__(self, recorder: StandInTensorRT) -> None:
        self.recorder = recorder
        self.cache: _TimingCache | None = None

    def set_memory_pool_limit(self, pool: Any, size: int) -> None:
        self.recorder.calls.append(("set_memory_pool_limit", (pool.name, size)))

    def clear_flag(self, flag: Any) -> None:
        self.recorder.calls.append(("clear_flag", flag.name))

    def set_flag(self, flag: Any) -> None:
        self.recorder.calls.append(("set_flag", flag.name))

    def add_optimization_profile(self, profile: Any) -> int:
        self.recorder.calls.append(("add_optimization_profile", profile.shapes))
        return 0

    def create_timing_cache(self, data: bytes) -> _TimingCache:
        self.recorder.calls.append(("create_timing_cache", data))
        return _TimingCache(data)

    def set_timing_cache(self, cache: _TimingCache, ignore_mismatch: bool) -> bool:
        self.recorder.calls.append(("set_timing_cache", ignore_mismatch))
        self.cache = cache
        return True

    def get_timing_cache(self) -> _TimingCache:
        assert self.cache is not None
        return self.cache


class _Profile:
    def __init__(self, recorder: StandInTensorRT) -> None:
        self.shapes: dict[str, tuple] = {}

    def set_shape(self, name: str, lo: tuple, opt: tuple, hi: tuple) -> None:
        self.shapes[name] = (tuple(lo), tuple(opt), tuple(hi))
