"""`gpufleet dispatcher` and `gpufleet worker`: the two long-running processes of a fleet."""

from __future__ import annotations

import logging
import os
import re
import signal
import threading
from typing import TYPE_CHECKING, Any

import click

from gpufleet.dispatcher.fleet.autoscale import Autoscaler, ScaleCommand, ScaleParams, clear_desired
from gpufleet.dispatcher.loop import Dispatcher
from gpufleet.dispatcher.observe.metrics import DispatcherMetrics, serve
from gpufleet.dispatcher.observe.notifier import TIMEOUT_S, Notifier
from gpufleet.dispatcher.routing.policies import DEFAULT_POLICY, POLICY_NAMES, make_policy
from gpufleet.dispatcher.store.connection import connect, mask_url
from gpufleet.dispatcher.store.keys import Keys
from gpufleet.worker.gpu import PROBE_NAMES
from gpufleet.worker.recycle import RecycleLimits
from gpufleet.worker.run import (
    DEFAULT_ALLOW,
    DEFAULT_CONCURRENCY,
    WorkerOptions,
    default_node_id,
    run_gpu_nodes,
    run_worker,
)

from .state import CliState, pass_state

if TYPE_CHECKING:
    from gpufleet.worker.forwarder.server import OpenAIServer

log = logging.getLogger("gpufleet")

NOTIFIER_JOIN_S = TIMEOUT_S + 1  # a POST in flight when the dispatcher stops may finish; a new one does not start


@click.command()
@click.option("--policy", type=click.Choice(POLICY_NAMES), default=DEFAULT_POLICY, show_default=True,
              help="How a node is chosen for each job.")  # fmt: skip
@click.option("--alpha", type=float, default=None, help="load-aware: weight of GPU utilization (>= 0). Default 0.6.")
@click.option("--beta", type=float, default=None, help="load-aware: weight of GPU memory use (>= 0). Default 0.3.")
@click.option("--gamma", type=float, default=None, help="load-aware: constant term (> 0). Default 0.1.")
@click.option("--kv", type=float, default=None,
              help="load-aware: weight of a forwarder's server's KV-cache use, 0..1 (>= 0). Default 0.5.")
@click.option("--prefetch", type=click.IntRange(min=0), default=None,
              help="Jobs a node may hold beyond its capacity; the rest wait in the ingress. By default what the "
                   "measured dispatch latency needs: none while a slot would idle under 2% of its time waiting for its "
                   "refill, more for jobs short next to the latency. A number is a floor.")  # fmt: skip
@click.option("--max-node-queue", type=click.IntRange(min=0), default=None,
              help="Cap on jobs per node instead of capacity + prefetch; 0 lifts the cap.")  # fmt: skip
@click.option("--metrics-port", type=click.IntRange(min=0, max=65535), default=0, show_default=True,
              help="Serve Prometheus metrics at http://0.0.0.0:PORT/metrics; 0: off.")  # fmt: skip
@click.option("--max-nodes", type=click.IntRange(min=0), default=None,
              help="Autoscaling: ask for at most N nodes; 0 (the default) turns the autoscaler off.")  # fmt: skip
@click.option("--min-nodes", type=click.IntRange(min=0), default=None, help="Autoscaling: ask for at least N nodes.")
@click.option("--target-drain-s", type=click.FloatRange(min=0, min_open=True), default=None, metavar="S",
              help="Autoscaling: enough nodes to drain the waiting jobs within S seconds. Default 60.")  # fmt: skip
@click.option("--scale-cmd", default=None, metavar="'CMD {n}'",
              help="Run CMD (no shell) with {n} = the new desired node count each time it changes.")  # fmt: skip
@pass_state
def dispatcher(state: CliState, policy: str, alpha: float | None, beta: float | None, gamma: float | None,
               kv: float | None, prefetch: int | None, max_node_queue: int | None, metrics_port: int,
               max_nodes: int | None, min_nodes: int | None, target_drain_s: float | None,
               scale_cmd: str | None) -> None:  # fmt: skip
    """Route jobs from the ingress queues to node queues until stopped (Ctrl-C or SIGTERM).

    Reads node heartbeats every ~150 ms and moves jobs in batches with one atomic Lua call.
    With no live node, jobs wait in the ingress.
    """
    settings = state.settings.with_overrides(policy=policy, alpha=alpha, beta=beta, gamma=gamma, kv=kv,
                                             prefetch=prefetch, max_node_queue=max_node_queue, max_nodes=max_nodes,
                                             min_nodes=min_nodes, target_drain_s=target_drain_s,
                                             scale_cmd=scale_cmd)  # fmt: skip
    chosen = make_policy(settings.policy, alpha=settings.alpha, beta=settings.beta, gamma=settings.gamma,
                         kv=settings.kv)  # fmt: skip
    r = connect(settings.redis_url)
    stop = _stop_on_signals()
    metrics = DispatcherMetrics(chosen.name, forget_dead_after_s=settings.forget_dead_after_s) if metrics_port else None
    if metrics:
        serve(metrics.registry, metrics_port)
    log.info("dispatcher started redis=%s policy=%s", mask_url(settings.redis_url), chosen.name)
    autoscaler = None
    if settings.max_nodes:
        params = ScaleParams(settings.target_drain_s, settings.min_nodes, settings.max_nodes,
                             settings.scale_up_cooldown_s, settings.scale_down_cooldown_s)  # fmt: skip
        autoscaler = Autoscaler(r, Keys(settings.namespace), params,
                                on_change=ScaleCommand(settings.scale_cmd) if settings.scale_cmd else None)  # fmt: skip
    else:
        clear_desired(r, Keys(settings.namespace))
    d = Dispatcher(r, settings, chosen, metrics=metrics, autoscaler=autoscaler)
    notifier = Notifier(r, Keys(settings.namespace), active=lambda: d.lease.held)  # sends only with the lease
    notifying = threading.Thread(target=notifier.run, args=(stop,), name="notifier", daemon=True)
    notifying.start()
    d.run(stop)
    notifying.join(NOTIFIER_JOIN_S)
    log.info("dispatcher stopped moved=%d", d.moved_total)


GPU_LABEL = re.compile(r"\d+(:\d+)?")  # a GPU index, or GPU:instance for a MIG instance


def parse_gpus(ctx: click.Context, param: click.Parameter, value: str | None) -> str | None:
    """`--gpus` as typed: 'all', or GPU labels (0,1,3; 0:1 for a MIG instance), each once; anything
    else is a usage error (exit 2). Whether the host has those GPUs is checked when the worker
    starts (exit 1: the host, not the typing)."""
    if value is None:
        return None
    spec = value.strip()
    if spec.lower() == "all":
        return "all"
    labels = [s.strip() for s in spec.split(",") if s.strip()]
    if not labels:
        raise click.BadParameter(f"{value!r}: give 'all' or GPU indices such as 0,1,3")
    for label in labels:
        if not GPU_LABEL.fullmatch(label):
            raise click.BadParameter(f"{label!r} is not a GPU index; give 'all' or indices such as 0,1,3 "
                                     "(0:1 for MIG instance 1 of GPU 0)")  # fmt: skip
    if duplicates := sorted({x for x in labels if labels.count(x) > 1}):
        raise click.BadParameter(f"GPU {', '.join(duplicates)} named twice in {value!r}")
    return ",".join(labels)


@click.command()
@click.option("--node-id", default=None,
              help="This node's id (default: the host name); with --gpus, the prefix of each.")  # fmt: skip
@click.option("--gpus", default=None, metavar="all|0,1,3", callback=parse_gpus,
              help="One node per GPU, each its own process pinned with CUDA_VISIBLE_DEVICES, named "
                   "<node-id>-gpu<N>; restarted if it dies. 'all': every GPU NVML sees, MIG instances "
                   "included (as 0:1). Default: one node on whatever GPUs the process sees.")  # fmt: skip
@click.option("--gpus-per-node", type=click.IntRange(min=1), default=1, show_default=True,
              help="With --gpus: GPUs per node, for a model that spans several "
                   "(node <node-id>-gpu0+1).")  # fmt: skip
@click.option("--probe", type=click.Choice(PROBE_NAMES), default="nvml", show_default=True,
              help="GPU figures from NVML, from the CPU (no GPU), or simulated from the worker's "
                   "busy time.")  # fmt: skip
@click.option("--sim-speed", type=click.FloatRange(min=0, min_open=True), default=1.0, show_default=True,
              help="Speed of a simulated node: gpufleet.worker.tasks:synthetic runs cost / speed "
                   "seconds.")  # fmt: skip
@click.option("--capacity", type=click.IntRange(min=1), default=1, show_default=True,
              help="Jobs this node runs at once, as reported to the dispatcher.")  # fmt: skip
@click.option("--weight", type=click.FloatRange(min=0), default=1.0, show_default=True,
              help="Static weight for the weighted-round-robin policy.")  # fmt: skip
@click.option("--allow", multiple=True, metavar="MODULE",
              help="Module whose functions this worker may run (repeatable). "
                   "Default: gpufleet.worker.tasks.")  # fmt: skip
@click.option("--burst", is_flag=True, help="Exit once the node queue is empty.")
@click.option("--metrics-port", type=click.IntRange(min=0, max=65535), default=0, show_default=True,
              help="Serve Prometheus metrics at http://0.0.0.0:PORT/metrics (with --gpus, node i on "
                   "PORT+i); 0: off.")  # fmt: skip
@click.option("--openai-url", default=None, metavar="URL",
              help="Forward OpenAI batch requests to this OpenAI-compatible server (vLLM, SGLang, TGI, Ollama, "
                   "Infinity...), e.g. http://127.0.0.1:8000/v1, instead of running Python functions. With "
                   "--gpus, {gpu} and {8000+gpu} in it name each node's own server.")  # fmt: skip
@click.option("--concurrency", type=click.IntRange(min=1), default=None,
              help="With --openai-url: requests in flight at once (the node's capacity). Default 64.")  # fmt: skip
@click.option("--api-key-env", default=None, metavar="VAR",
              help="With --openai-url: the environment variable holding the server's API key (sent as a "
                   "bearer token; never printed).")  # fmt: skip
@click.option("--request-timeout-s", type=click.FloatRange(min=0, min_open=True), default=None,
              help="With --openai-url: a request's timeout in seconds (its job's own timeout, when shorter, wins). "
                   "Default 600.")  # fmt: skip
@click.option("--max-jobs", type=click.IntRange(min=1), default=None, metavar="N",
              help="Replace a slot process with a fresh one after it has run N jobs (a batched call counts each "
                   "of its jobs): the slot finishes and records the job that reaches N, takes nothing more and exits; "
                   "the node restarts it at once, same node id, and the new process loads its models again. "
                   "Default: never.")  # fmt: skip
@click.option("--max-memory-mib", type=click.IntRange(min=1), default=None, metavar="M",
              help="Replace a slot process with a fresh one after a job that leaves its resident memory (RSS, not "
                   "GPU memory) above M MiB, as --max-jobs does. Default: never.")  # fmt: skip
@pass_state
def worker(state: CliState, node_id: str | None, gpus: str | None, gpus_per_node: int, probe: str, sim_speed: float,
           capacity: int, weight: float, allow: tuple[str, ...], burst: bool, metrics_port: int,
           openai_url: str | None, concurrency: int | None, api_key_env: str | None,
           request_timeout_s: float | None, max_jobs: int | None, max_memory_mib: int | None) -> None:  # fmt: skip
    """Work this node's queue, with a heartbeat, until Ctrl-C or SIGTERM (the running job finishes).

    Jobs run in this node's slot processes (no fork per job), so a model loaded once stays
    warm. Only functions of allowed modules run; any other job fails with a clear error. A
    task marked @batched gets up to its max_size jobs at once.

    With --openai-url the node forwards OpenAI batch requests to that server instead, up to
    --concurrency at once, and advertises the models the server lists.

    A job that raises a CUDA out-of-memory error is retried on another node (this one takes no
    new job for GPUFLEET_OOM_COOLDOWN_S, 10 s) while its slot process is replaced by a fresh one.

    On a host with 8 GPUs: `gpufleet worker --gpus all` runs 8 nodes, one per GPU.
    """
    if openai_url and (max_jobs or max_memory_mib):
        flag = "--max-jobs" if max_jobs else "--max-memory-mib"
        raise click.UsageError(f"{flag} is for a worker of Python functions: a forwarder (--openai-url) holds no "
                               "model, and its server manages its own memory")  # fmt: skip
    opts = WorkerOptions(node_id=node_id or default_node_id(), probe=probe, sim_speed=sim_speed,
                         capacity=capacity, weight=weight, allow=allow or DEFAULT_ALLOW, burst=burst,
                         metrics_port=metrics_port, openai=_server(openai_url, api_key_env, request_timeout_s),
                         concurrency=concurrency or DEFAULT_CONCURRENCY,
                         recycle=RecycleLimits(max_jobs or 0, max_memory_mib or 0))  # fmt: skip
    if gpus is not None:
        if gpus != "all" and len(gpus.split(",")) % gpus_per_node:
            raise click.UsageError(f"--gpus {gpus} names {len(gpus.split(','))} GPUs, which do not split into "
                                   f"nodes of --gpus-per-node {gpus_per_node}")  # fmt: skip
        run_gpu_nodes(state.settings, opts, gpus, gpus_per_node)
    elif gpus_per_node != 1:
        raise click.UsageError("--gpus-per-node needs --gpus")
    else:
        run_worker(state.settings, opts)


def _server(url: str | None, api_key_env: str | None, request_timeout_s: float | None) -> OpenAIServer | None:
    """The --openai-url server, or None; its API key read from the variable --api-key-env names."""
    if url is None:
        ctx = click.get_current_context()
        for name in ("concurrency", "api_key_env", "request_timeout_s"):
            if ctx.params.get(name) is not None:
                flag = "--" + name.replace("_", "-")
                hint = " (a Python worker's job slots are --capacity)" if name == "concurrency" else ""
                raise click.UsageError(f"{flag} is for a forwarder: it needs --openai-url{hint}")
        return None
    if not url.startswith(("http://", "https://")):
        raise click.BadParameter(f"{url!r} is not an http:// or https:// URL", param_hint="'--openai-url'")
    try:
        from gpufleet.worker.forwarder.server import OpenAIServer
    except ImportError as e:  # httpx
        raise click.UsageError(f"--openai-url needs the openai extra: pip install 'gpufleet[openai]' ({e})") from None
    key = None
    if api_key_env:
        key = os.environ.get(api_key_env)
        if not key:
            raise click.UsageError(f"--api-key-env {api_key_env}: that environment variable is not set")
    if request_timeout_s is None:
        return OpenAIServer(url, api_key=key)
    return OpenAIServer(url, api_key=key, request_timeout_s=request_timeout_s)


def _stop_on_signals() -> threading.Event:
    stop = threading.Event()

    def handler(signum: int, frame: Any) -> None:
        stop.set()

    signal.signal(signal.SIGINT, handler)
    signal.signal(signal.SIGTERM, handler)
    return stop
