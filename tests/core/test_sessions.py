from __future__ import annotations

import click
import pytest

from clip_export.cli_parse import _parse_providers
from clip_export.core.environment import GPU_PROVIDERS
from clip_export.core.errors import ProviderUnavailableError
from clip_export.core.sessions import available_providers, check_available, provider_name, provider_spec
from clip_export.core.spec import CPU_PROVIDER, EXECUTION_PROVIDERS, PROVIDERS, TENSORRT_RUNTIME


@pytest.mark.parametrize("provider", EXECUTION_PROVIDERS, ids=lambda p: p.short)
def test_every_spelling_of_a_provider_is_one_provider(provider) -> None:
    for spelling in (provider.short, provider.short.upper(), provider.ort_name, *provider.aliases):
        assert provider_name(spelling) == provider.ort_name
        assert provider_spec(spelling) is provider


def test_an_unknown_provider_names_the_choices() -> None:
    with pytest.raises(ProviderUnavailableError, match="unknown provider 'rocm'; choose from cpu, cuda, tensorrt"):
        provider_name("rocm")


def test_the_registry_decides_what_is_a_gpu_and_what_binds_device_memory() -> None:
    assert PROVIDERS["cpu"] == CPU_PROVIDER == EXECUTION_PROVIDERS[0].ort_name
    assert set(GPU_PROVIDERS) == {p.ort_name for p in EXECUTION_PROVIDERS if p.gpu} | {TENSORRT_RUNTIME}
    assert provider_spec("cpu").io_binding_device is None and provider_spec("cuda").io_binding_device == "cuda"


def test_a_missing_provider_is_refused_with_its_install_hint() -> None:
    missing = [p for p in EXECUTION_PROVIDERS if p.ort_name not in available_providers()]
    if not missing:
        pytest.skip("every provider is available here")
    with pytest.raises(ProviderUnavailableError, match=f"requested provider was {missing[0].ort_name}.*"):
        check_available(missing[0].short)
    with pytest.raises(ProviderUnavailableError) as info:
        check_available(missing[0].short)
    assert missing[0].install_hint in str(info.value)


def test_the_cli_normalises_providers_once_at_its_edge() -> None:
    assert _parse_providers(None, None, "CPU, CPUExecutionProvider,gpu") == ["cpu", "cuda"]
    with pytest.raises(click.BadParameter, match="unknown provider"):
        _parse_providers(None, None, "cpu,rocm")


def test_a_profiled_session_writes_its_node_trace_where_asked(tmp_path) -> None:
    import json

    import numpy as np
    from onnx import TensorProto, helper

    from clip_export.core.sessions import SessionOptions, create_session

    graph = helper.make_graph(
        [helper.make_node("Relu", ["x"], ["y"])],
        "relu",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]).SerializeToString()
    session = create_session(model, SessionOptions(profile_prefix=str(tmp_path / "trace")))
    assert session.run(None, {"x": np.array([-1.0, 2.0], np.float32)})[0].tolist() == [0.0, 2.0]
    trace = tmp_path / session.end_profiling().rpartition("/")[2]
    assert trace.name.startswith("trace") and any(e.get("cat") == "Node" for e in json.loads(trace.read_text()))
