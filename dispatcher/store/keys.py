"""Every Redis key name gpufleet touches, with its type and owner. Nothing else builds one.

gpufleet's own keys use ':' (`gpufleet:node:a:hb`); rq queue *names* use '.'
(`gpufleet.node.a`), and rq adds its own prefix for the LIST (`rq:queue:gpufleet.node.a`).
Fields that gpufleet adds to rq's job HASH are in `JobField`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

RQ_QUEUES = "rq:queues"  # SET of rq queue keys; rq lists only the queues found here

PRIORITIES = ("high", "normal", "low")  # ingress order: high is served first
DEFAULT_TENANT = "default"  # the tenant of a job submitted without one

# A namespace prefixes every gpufleet key, so it holds neither separator (':' in key names, '.'
# in queue names), nor '*' (a SORT pattern's wildcard, snapshot.py), nor anything a terminal or a
# log line would mangle; and it is not "rq", whose keys (rq:job:..., rq:queue:...) belong to rq.
_NAMESPACE_RE = re.compile(r"[A-Za-z0-9_-]{1,64}")


def namespace_problem(namespace: str) -> str | None:
    """Why `namespace` cannot prefix gpufleet's keys, or None when it can."""
    if not isinstance(namespace, str) or not _NAMESPACE_RE.fullmatch(namespace):
        return f"namespace {namespace!r} must be 1-64 characters, each a letter, a digit, '_' or '-'"
    if namespace == "rq":
        return "namespace 'rq' would mix gpufleet's keys into rq's own (rq:...); choose another"
    return None


def tenant_problem(tenant: str) -> str | None:
    """Why `tenant` cannot name a tenant, or None when it can (the namespace's rule: it is shown
    in tables, metrics labels and log lines)."""
    if not isinstance(tenant, str) or not _NAMESPACE_RE.fullmatch(tenant):
        return f"tenant {tenant!r} must be 1-64 characters, each a letter, a digit, '_' or '-'"
    return None


class JobField:
    """Fields gpufleet keeps in rq's job HASH beside rq's own (rq ignores unknown fields)."""

    BATCH = "gf_batch"  # batch id the job belongs to
    CLIENT_ID = "gf_id"  # the client's own id from the job file ("" when none)
    PRIORITY = "gf_priority"  # high | normal | low: which ingress the job waits in
    NEEDS = "gf_needs"  # what routing must respect (model, affinity, GPU memory): job.needs_field
    TENANT = "gf_tenant"  # the tenant the job's batch belongs to
    # the tenant the job is counted under in keys.tenant_flight while it is in flight (taken from
    # its lane: in an ingress, a node queue or running); absent otherwise
    FLIGHT = "gf_flight"
    NODE = "gf_node"  # node the job is routed to now ("" while it waits in an ingress)
    ATTEMPTS = "gf_attempts"  # executions started so far
    RETRIES = "gf_retries"  # extra attempts the job may have after a failure
    ERROR = "gf_error"  # why gpufleet ended the job (e.g. "node a lost"); rq's results hold job errors
    # the batch's ended-list length when `submit --resume` put this failed or canceled job back:
    # its entries below that index record an ending the resume undid (results --follow skips them)
    ENDED_FROM = "gf_ended_from"


@dataclass(frozen=True)
class Keys:
    """Key names for one fleet; several fleets can share a Redis under different namespaces."""

    namespace: str = "gpufleet"

    @property
    def nodes(self) -> str:  # SET of node ids that ever sent a heartbeat
        return f"{self.namespace}:nodes"

    def heartbeat(self, node_id: str) -> str:  # HASH, written by worker/heartbeat.py every ~1 s
        return f"{self.namespace}:node:{node_id}:hb"

    def alive(self, node_id: str) -> str:
        # STRING with TTL, value = the holding process's incarnation; expired = node dead
        return f"{self.namespace}:node:{node_id}:alive"

    def held(self, node_id: str, holder: str) -> str:
        # LIST: jobs one worker process took from its node queue, not yet started
        return f"{self.namespace}:node:{node_id}:held:{holder}"

    def node_wakeup(self, node_id: str) -> str:
        # LIST of <= 1 token: jobs arrived in the node queue; idle workers BLPOP it
        return f"{self.namespace}:node:{node_id}:wakeup"

    def held_lists(self, node_id: str) -> str:  # SET of the node's `held` LIST keys, every process's, any incarnation
        return f"{self.namespace}:node:{node_id}:held"

    def ingress_queue(self, priority: str) -> str:  # rq queue *name* nobody works
        return f"{self.namespace}.ingress.{priority}"

    def lane_queue(self, priority: str, batch_id: str) -> str:
        # rq queue *name* nobody works: a batch's jobs of one priority not yet taken into the
        # ingress (their `origin` while there); the dispatcher feeds the ingress from the lanes
        # by fair share between tenants, and between each tenant's batches
        return f"{self.namespace}.lane.{priority}.{batch_id}"

    def lanes(self, priority: str) -> str:  # HASH batch id -> tenant: the lanes of `priority` holding jobs
        return f"{self.namespace}:lanes:{priority}"

    @property
    def tenants(self) -> str:  # HASH tenant -> its settings as JSON (weight, max_running, max_queued)
        return f"{self.namespace}:tenants"

    @property
    def tenant_flight(self) -> str:  # HASH tenant -> jobs in flight (JobField.FLIGHT set on each)
        return f"{self.namespace}:tenants:flight"

    def node_queue(self, node_id: str) -> str:  # rq queue *name* worked by that node only
        return f"{self.namespace}.node.{node_id}"

    def batch_jobs(self, batch_id: str) -> str:  # LIST of job ids in submission order
        return f"{self.namespace}:batch:{batch_id}:jobs"

    def batch_ended(self, batch_id: str) -> str:
        # LIST of job ids in the order they reached a final state (finished, failed, canceled),
        # written with the outcome; `results --follow` reads it from where it left off
        return f"{self.namespace}:batch:{batch_id}:ended"

    def batch_info(self, batch_id: str) -> str:
        # HASH: size, created_at, func, the outcome counters (job.BatchCounter); notify_url (submit
        # --notify) and ended_event (the id of its latest batch_ended event: lua/_batch_ended.lua)
        return f"{self.namespace}:batch:{batch_id}"

    @property
    def batches(self) -> str:  # ZSET batch id -> created_at (unix time); Submitter.start_batch adds to it
        return f"{self.namespace}:batches"

    @property
    def events(self) -> str:
        # STREAM of job and batch state changes (format: store/events.py), capped at about
        # Settings.events_max entries; written by the scripts that start and end jobs
        return f"{self.namespace}:events"

    @property
    def notifications(self) -> str:
        # HASH of the notifier (observe/notifier.py): "cursor" -> the last event id it has read;
        # each batch_ended event id whose batch has a notify URL -> that batch id, until delivered
        return f"{self.namespace}:notifications"

    @property
    def history(self) -> str:  # HASH slot -> one bucket of the fleet's recent history (observe/history.py)
        return f"{self.namespace}:history"

    @property
    def desired_nodes(self) -> str:  # STRING: node count the autoscaler wants (dispatcher/autoscale.py)
        return f"{self.namespace}:autoscale:desired"

    def drain_flag(self, node_id: str) -> str:  # STRING; present = route nothing there (drain/SIGTERM; see node_claim)
        return f"{self.namespace}:node:{node_id}:drain"

    def ejected(self, node_id: str) -> str:
        # STRING with TTL = cool-down; present = node ejected (failing too often: value its failure
        # rate; a job of it ran out of CUDA memory: "cuda-oom")
        return f"{self.namespace}:node:{node_id}:ejected"

    def stop_requests(self, node_id: str) -> str:
        # SET of started-registry members ("job_id:execution_id") asked to stop on the node (`cancel
        # --running`); its stopper (worker/stopper.py) acts on them, and whatever ends a run removes it
        return f"{self.namespace}:node:{node_id}:stop"

    def stop_wakeup(self, node_id: str) -> str:  # LIST of <= 1 token: a stop was asked; the node's stopper BLPOPs it
        return f"{self.namespace}:node:{node_id}:stop:wakeup"

    def retry_schedule(self, priority: str) -> str:  # ZSET job id -> unix time its retry is due
        return f"{self.namespace}:retry:{priority}"

    @property
    def dispatcher_lease(self) -> str:  # STRING holder token with PX TTL: the active dispatcher
        return f"{self.namespace}:dispatcher:lease"

    @property
    def dispatch_wakeup(self) -> str:  # LIST of <= 1 token: submits and job ends wake a waiting dispatcher
        return f"{self.namespace}:dispatch:wakeup"

    @property
    def dispatch_ended(self) -> str:
        # HASH node id -> runs that ended there since the dispatcher's last read (the record step
        # counts each in the same atomic step as its outcome); the dispatcher reads and resets it
        return f"{self.namespace}:dispatch:ended"

    @staticmethod
    def rq_queue(name: str) -> str:  # LIST of job ids (rq's own key)
        return f"rq:queue:{name}"

    @staticmethod
    def rq_intermediate(name: str) -> str:  # LIST: a job a worker popped but has not started (rq's)
        return f"rq:queue:{name}:intermediate"

    @staticmethod
    def rq_started(name: str) -> str:  # ZSET of "job_id:execution_id" running from queue `name` (rq's)
        return f"rq:wip:{name}"

    @staticmethod
    def rq_failed(name: str) -> str:  # ZSET job id -> expiry: the dead-letter queue of `name` (rq's)
        return f"rq:failed:{name}"

    @staticmethod
    def rq_canceled(name: str) -> str:  # ZSET job id -> expiry (rq's canceled registry)
        return f"rq:canceled:{name}"

    @staticmethod
    def rq_job(job_id: str) -> str:  # HASH (rq's own key); `origin` = queue name
        return f"rq:job:{job_id}"

    RQ_EXECUTION_PREFIX = "rq:execution:"  # + "job_id:execution_id" (scripts build the key from it)
    RQ_EXECUTIONS_PREFIX = "rq:executions:"  # + job id

    @staticmethod
    def rq_execution(job_id: str, execution_id: str) -> str:  # HASH: one run of a job (rq's Execution)
        return f"{Keys.RQ_EXECUTION_PREFIX}{job_id}:{execution_id}"

    @staticmethod
    def rq_executions(job_id: str) -> str:  # ZSET execution id -> expiry: a job's runs (rq's ExecutionRegistry)
        return f"{Keys.RQ_EXECUTIONS_PREFIX}{job_id}"

    @staticmethod
    def rq_worker(worker_name: str) -> str:  # HASH: an rq worker's state and counters (rq's own key)
        return f"rq:worker:{worker_name}"

    @staticmethod
    def rq_worker_executions(worker_name: str) -> str:  # SET of "job_id:execution_id" a worker runs (rq's)
        return f"rq:worker:{worker_name}:executions"

    RQ_RESULTS_PREFIX = "rq:results:"  # + job id (scripts build the key from it)

    @staticmethod
    def rq_results(job_id: str) -> str:  # STREAM of rq Results, newest last (rq's own key)
        return f"{Keys.RQ_RESULTS_PREFIX}{job_id}"

    @staticmethod
    def rq_finished(name: str) -> str:  # ZSET job id -> expiry: jobs finished from queue `name` (rq's)
        return f"rq:finished:{name}"
