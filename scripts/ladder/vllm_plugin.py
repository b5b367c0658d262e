"""vLLM platform plugin: `--distributed-executor-backend ray` on CPU (DESIGN.md §7).

Stock vLLM refuses Ray on CPU ("current platform cpu does not support ray."). This plugin is
vLLM's CpuPlatform with three overrides, each answering one place in vLLM 0.32.0:

1. `ray_device_key` (vllm/v1/executor/ray_utils.py: initialize_ray_cluster; ray_executor.py
   and ray_executor_v2.py: actor resources): a custom Ray resource, RAY_RESOURCE, that every
   node registers with `ray start --resources='{"ladder_cpu_slot": N}'`. Placement groups get
   one bundle of it per worker.
2. `get_node_and_physical_gpu_ids` (ray_executor_v2.py: RayWorkerProc; ray_utils.py:
   RayWorkerWrapper) indexes Ray's `get_accelerator_ids()` by that key, which only knows
   built-in accelerators -> KeyError. The IDs are unused on CPU (CPUWorker.init_device ignores
   them), so the plugin adds an empty entry for RAY_RESOURCE to that dict, in its own processes.
3. The CPU communicator (distributed/device_communicators/cpu_communicator.py:
   CpuCommunicator._all_group_ranks_share_shm_group_name) takes a /dev/shm fast path for tp/pp
   groups whose ranks derive the same segment name - also on separate hosts, where the
   segment does not exist (errno 2). The subclass allows it only when all ranks share one host
   IP and one /dev/shm mount; otherwise the group uses gloo.

Off unless LADDER_CPU_RAY=1, so GPU clusters and plain CPU runs see stock vLLM. vLLM imports
the plugin in every process that resolves the platform (API server, engine core, Ray actors).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Mapping, Sequence
from functools import cache
from typing import Any

ENV_FLAG = "LADDER_CPU_RAY"
RAY_RESOURCE = "ladder_cpu_slot"
PLATFORM_CLS = "LadderCpuRayPlatform"
COMMUNICATOR_CLS = "LadderCpuCommunicator"
UNKNOWN_IPS = frozenset({"", "0.0.0.0", "::"})  # vLLM's get_ip() fallback when it finds none


def enabled(environ: Mapping[str, str] = os.environ) -> bool:
    return environ.get(ENV_FLAG) == "1"


def register() -> str | None:
    """Entry point `vllm.platform_plugins:ladder_cpu_ray`: the platform's qualname, or None (off)."""
    if not enabled():
        return None
    _add_ray_resource_to_accelerator_ids()
    return f"{__name__}.{PLATFORM_CLS}"


def shm_fast_path_ok(peers: Sequence[tuple[str, str, int]]) -> bool:
    """Decide the CPU communicator's transport from every rank's (shm group name, IP, /dev/shm st_dev).

    /dev/shm only works between processes that see the same tmpfs: same host (IP) and same
    mount (a sandbox node with a private /dev/shm has another device number). An unknown IP
    cannot prove that, so it selects gloo too.
    """
    return bool(peers) and len(set(peers)) == 1 and peers[0][1] not in UNKNOWN_IPS


def _add_ray_resource_to_accelerator_ids() -> None:
    """Override 2: make `get_accelerator_ids()[RAY_RESOURCE]` answer [] instead of KeyError.

    Wrapping Ray's one method covers both vLLM executors without copying their code; other
    keys are returned unchanged. Runs from register(), which vLLM calls in a Ray actor when
    it first reads current_platform.ray_device_key - just before the lookup.
    """
    try:
        from ray.runtime_context import RuntimeContext
    except ImportError:  # no Ray, no Ray executor
        return
    original = RuntimeContext.get_accelerator_ids
    if getattr(original, "_ladder_patched", False):
        return

    def get_accelerator_ids(self: RuntimeContext) -> dict[str, list[str]]:
        ids = original(self)
        ids.setdefault(RAY_RESOURCE, [])
        return ids

    get_accelerator_ids._ladder_patched = True  # type: ignore[attr-defined]
    RuntimeContext.get_accelerator_ids = get_accelerator_ids  # type: ignore[method-assign]


def _host_ip() -> str:
    """The IP of the Ray node this process runs on, else vLLM's own notion (VLLM_HOST_IP)."""
    with contextlib.suppress(ImportError):
        import ray

        if ray.is_initialized():
            return ray.util.get_node_ip_address()
    from vllm.utils.network_utils import get_ip

    return get_ip()


@cache
def _platform_cls() -> type:
    # Built on first use so importing this module (register() runs in every vLLM process,
    # also with the plugin off) does not load torch.
    from vllm.platforms.cpu import CpuPlatform

    class LadderCpuRayPlatform(CpuPlatform):
        # Override 1. Also ask vLLM to set ENV_FLAG=1 in every Ray worker actor's runtime_env
        # (the list meant for RAY_EXPERIMENTAL_NOSET_*), so actors select this platform even
        # where a node's `ray start` environment lacks it.
        ray_device_key: str = RAY_RESOURCE
        ray_noset_device_env_vars: list[str] = [ENV_FLAG]

        @classmethod
        def get_device_communicator_cls(cls) -> str:
            return f"{__name__}.{COMMUNICATOR_CLS}"

    LadderCpuRayPlatform.__qualname__ = PLATFORM_CLS  # pickles by reference via __getattr__
    return LadderCpuRayPlatform


@cache
def _communicator_cls() -> type:
    # Separate and later than the platform: cpu_communicator reads current_platform at import,
    # which would recurse into platform resolution while vLLM is still resolving this plugin.
    import torch
    from vllm.distributed.device_communicators.cpu_communicator import CpuCommunicator, _CPUSHMDistributed

    class LadderCpuCommunicator(CpuCommunicator):
        def _all_group_ranks_share_shm_group_name(self) -> bool:
            # Override 3: the same collective as the base (every rank calls it), with more facts.
            local = (_CPUSHMDistributed.make_group_name(self), _host_ip(), os.stat("/dev/shm").st_dev)
            peers: list[Any] = [None] * self.world_size
            torch.distributed.all_gather_object(peers, local, group=self.device_group)
            return shm_fast_path_ok([tuple(p) for p in peers])

    LadderCpuCommunicator.__qualname__ = COMMUNICATOR_CLS
    return LadderCpuCommunicator


def __getattr__(name: str) -> type:
    # vLLM resolves both classes by qualname (resolve_obj_by_qualname -> getattr on this module).
    if name == PLATFORM_CLS:
        return _platform_cls()
    if name == COMMUNICATOR_CLS:
        return _communicator_cls()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
