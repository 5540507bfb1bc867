"""Inference on Ray actors that keep the model loaded: one node, several GPUs or machines.

Why actors and not tasks: loading a model costs seconds and GPU memory; an actor loads each
pipeline model once and serves job after job. Why only inference goes to Ray: the catalog,
the files, SEG/SR encoding, validation and dispatch stay in the node, so the catalog remains
the one source of truth. A volume travels to the actor through Ray's object store and the
Analysis comes back the same way. If an actor or its machine dies mid-job, the call raises,
the worker counts a failed attempt and the job goes back to the queue (`worker.max_attempts`).
The lost actor is replaced by a new one; its slot takes jobs again only once the replacement
has loaded its models, so while a machine is gone the remaining actors carry the queue.

The node's worker runs one loop thread per actor, each claiming jobs from the catalog, so
N actors work on N series at once.
"""
from __future__ import annotations

import logging
import os
import queue
import threading
from typing import Any

from dicom_node.config import Config
from inference.api import Analysis, AnalysisRequest, Volume, analyze, heap_child_env, preload

log = logging.getLogger(__name__)


class ModelHost:
    """The actor's body (made remote with ray.remote in RayAnalyzer): models loaded at start."""

    def __init__(self, models: list[str], device: str) -> None:
        self.device = device
        self.loaded = []
        for spec in models:
            try:
                self.loaded.append(preload(spec, device)[0].name)
            except Exception as exc:  # the node's /health names missing models; jobs fail with the reason
                log.error("ray actor: model %s not loaded: %s", spec, exc)

    def ping(self) -> dict[str, Any]:
        return {"pid": os.getpid(), "host": os.uname().nodename, "models": self.loaded}

    def analyze(self, volume: Volume, request: AnalysisRequest) -> Analysis:
        return analyze(volume, request)


class RayWorkerLost(RuntimeError):
    """The actor (or its machine) went away during the job; the job is retried."""


class RayAnalyzer:
    """Analyzer(volume, request) -> Analysis on a pool of `worker.ray.actors` actors."""

    def __init__(self, config: Config) -> None:
        self.config = config
        self.settings = config.worker.ray
        self._actors: list[Any] = []
        self._free: queue.Queue[int] = queue.Queue()
        self._owns_ray = False
        self._remote: Any = None
        self._models: list[str] = []
        self._stopping = threading.Event()

    @property
    def size(self) -> int:
        return self.settings.actors

    def start(self) -> None:
        """Connect to (or start) Ray, create the actors and wait until each has loaded its models."""
        try:
            import ray
        except ImportError:
            raise RuntimeError("worker.executor is ray but the ray package is not installed "
                               "(pip install ray), or set worker.executor: local") from None
        if not ray.is_initialized():
            address = self.settings.address or None
            try:
                ray.init(address=address, include_dashboard=False, log_to_driver=False,
                         logging_level=logging.WARNING)
            except ConnectionError as exc:
                raise RuntimeError(f"no Ray cluster at worker.ray.address {address!r} ({exc}): start it with "
                                   "`ray start --head` or leave the address empty for a local instance") from None
            self._owns_ray = True
        self._models = self.config.pipeline_model_paths()
        env = heap_child_env()  # set at the actor's start, before its threads (inference.heap)
        if self.config.worker.torch_threads:
            env["OMP_NUM_THREADS"] = str(self.config.worker.torch_threads)
        self._remote = ray.remote(ModelHost).options(
            num_cpus=self.settings.actor_cpus, num_gpus=self.settings.actor_gpus,
            max_restarts=0, max_task_retries=0, runtime_env={"env_vars": env} if env else None)
        self._actors = [self._new_actor() for _ in range(self.size)]
        pings = ray.get([a.ping.remote() for a in self._actors], timeout=self.settings.task_timeout_s)
        for i, info in enumerate(pings):
            self._free.put(i)
            log.info("ray actor %d on %s (pid %d): models %s", i, info["host"], info["pid"], info["models"])

    def _new_actor(self) -> Any:
        return self._remote.remote(self._models, self.config.worker.device)

    def _replace(self, index: int) -> None:
        """Swap a lost actor for a new one; its slot is free again once the new one has its models."""
        import ray

        try:
            ray.kill(self._actors[index], no_restart=True)
        except Exception:  # already gone with its machine
            pass
        actor = self._actors[index] = self._new_actor()

        def wait_ready() -> None:
            while not self._stopping.is_set():
                try:
                    info = ray.get(actor.ping.remote(), timeout=5.0)
                except ray.exceptions.GetTimeoutError:
                    continue  # no resources yet (the machine is still away): keep waiting
                except Exception as exc:
                    log.error("ray actor %d replacement failed: %s", index, exc)
                    return
                log.info("ray actor %d replaced on %s (pid %d)", index, info["host"], info["pid"])
                self._free.put(index)
                return

        threading.Thread(target=wait_ready, name=f"ray-actor-{index}", daemon=True).start()

    def __call__(self, volume: Volume, request: AnalysisRequest) -> Analysis:
        import ray
        from ray.exceptions import GetTimeoutError, RayActorError

        index = self._free.get(timeout=self.settings.task_timeout_s)
        lost = False
        try:
            ref = self._actors[index].analyze.remote(volume, request)
            return ray.get(ref, timeout=self.settings.task_timeout_s)
        except RayActorError as exc:
            lost = True
            raise RayWorkerLost(f"ray actor {index} was lost during inference ({type(exc).__name__}); "
                                "the job is queued again") from None
        except GetTimeoutError:
            ray.cancel(ref, force=True)
            raise RayWorkerLost(f"inference on ray actor {index} took longer than worker.ray.task_timeout_s "
                                f"{self.settings.task_timeout_s:.0f} s") from None
        finally:
            if lost:
                self._replace(index)
            else:
                self._free.put(index)

    def stop(self) -> None:
        self._stopping.set()
        try:
            import ray
        except ImportError:
            return
        for actor in self._actors:
            try:
                ray.kill(actor)
            except Exception:  # already gone with its node
                pass
        self._actors = []
        if self._owns_ray and ray.is_initialized():
            ray.shutdown()
