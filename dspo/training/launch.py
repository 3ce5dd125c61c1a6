"""Start the training processes of one node and see them through a stop signal.

``python -m dspo.training.launch [options] -- train ARGS`` runs ``dspo train ARGS`` as
``--procs-per-node`` processes joined into one process group with those of the other nodes.
It replaces ``accelerate launch``, whose torch elastic agent forwards SIGTERM to the workers
and SIGKILLs them 30 s later (``TORCH_ELASTIC_SHUTDOWN_TIMEOUT``; pytorch/pytorch#119856),
long before a large checkpoint is written. Here:

- every worker gets the variables of torch.distributed's ``env://`` rendezvous, which
  accelerate's ``Accelerator`` reads: ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``,
  ``LOCAL_WORLD_SIZE``, ``GROUP_RANK``, ``MASTER_ADDR``, ``MASTER_PORT``;
- TERM, USR1, INT, HUP and URG (the SLURM profile's early warning) sent to the launcher go
  to every worker, and the launcher waits for
  all of them however long their checkpoint takes (only SLURM's own kill ends them); the
  trainer agrees across ranks on the step to stop after (`dspo.training.train`);
- no accelerate config file is read, and the caller's ``ACCELERATE_*`` variables are dropped,
  so a user's ``~/.cache/huggingface/accelerate/default_config.yaml`` or exported default
  cannot change a run;
- a worker that fails on its own (no stop signal) would leave the others waiting in a
  collective: they get TERM, then KILL after ``--grace`` seconds.

Under SLURM (``--slurm``, one launcher per node started by ``srun --ntasks-per-node=1``), the
node rank, node count and main address come from ``SLURM_NODEID``, ``SLURM_STEP_NUM_NODES``
and the first host of ``scontrol show hostnames $SLURM_STEP_NODELIST``; the port from the job
id, so that every node agrees on it without talking. Exit status: the first failing worker's
(128 + signal number for one killed by a signal), else 0.
"""

from __future__ import annotations

import argparse
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from types import FrameType

FORWARDED = (signal.SIGTERM, signal.SIGUSR1, signal.SIGINT, signal.SIGHUP, signal.SIGURG)
DEFAULT_PORT = 29500
# Ports derived from a SLURM job id fall in [PORT_BASE, PORT_BASE + PORT_SPAN).
PORT_BASE, PORT_SPAN = 20000, 20000


@dataclass(frozen=True)
class Topology:
    """Where this launcher's processes sit in the process group."""

    nodes: int
    node_rank: int
    procs_per_node: int
    main_address: str
    main_port: int

    @property
    def world_size(self) -> int:
        return self.nodes * self.procs_per_node


def worker_env(
    base: Mapping[str, str], topo: Topology, local_rank: int, cpu: bool
) -> dict[str, str]:
    """The environment of one worker: ``base`` without accelerate's variables, plus its rank."""
    env = {k: v for k, v in base.items() if not k.startswith("ACCELERATE_")}
    if cpu:
        # Without CUDA, accelerate joins the processes into one gloo group only when told.
        env["ACCELERATE_USE_CPU"] = "1"
    if topo.world_size > 1:
        env.update(
            RANK=str(topo.node_rank * topo.procs_per_node + local_rank),
            WORLD_SIZE=str(topo.world_size),
            LOCAL_RANK=str(local_rank),
            LOCAL_WORLD_SIZE=str(topo.procs_per_node),
            GROUP_RANK=str(topo.node_rank),
            MASTER_ADDR=topo.main_address,
            MASTER_PORT=str(topo.main_port),
        )
    return env


def free_port() -> int:
    """A port nothing listens on now, for a group that lives on this node only."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def port_of_job(job_id: str) -> int:
    """A port every node of one SLURM job derives alike, different for neighbouring jobs."""
    return PORT_BASE + int(job_id) % PORT_SPAN


def first_host(nodelist: str) -> str:
    """The first host of a SLURM node list such as ``gpu[03-04,07]``."""
    hosts = subprocess.run(
        ["scontrol", "show", "hostnames", nodelist], capture_output=True, text=True, check=True
    ).stdout.split()
    if not hosts:
        raise ValueError(f"scontrol show hostnames {nodelist!r} listed no host")
    return hosts[0]


def slurm_topology(env: Mapping[str, str], procs_per_node: int) -> Topology:
    """The topology of one task of ``srun --ntasks-per-node=1`` across the job's nodes."""
    missing = [k for k in ("SLURM_NODEID", "SLURM_JOB_ID") if k not in env]
    if missing:
        raise ValueError(f"--slurm: {', '.join(missing)} not set; start it with srun")
    nodes = int(env.get("SLURM_STEP_NUM_NODES") or env.get("SLURM_NNODES") or 1)
    nodelist = env.get("SLURM_STEP_NODELIST") or env.get("SLURM_JOB_NODELIST", "")
    address = first_host(nodelist) if nodes > 1 else "127.0.0.1"
    return Topology(
        nodes, int(env["SLURM_NODEID"]), procs_per_node, address, port_of_job(env["SLURM_JOB_ID"])
    )


class Workers:
    """The worker processes of this node, with signals forwarded to them."""

    def __init__(self, procs: Sequence[subprocess.Popen]) -> None:
        self.procs = list(procs)
        self.signalled: int | None = None

    def forward(self, signum: int, frame: FrameType | None = None) -> None:
        self.signalled = signum
        for proc in self.procs:
            if proc.poll() is None:
                proc.send_signal(signum)

    def wait(self, grace: float, poll: float = 0.2) -> int:
        """Wait for every worker; the first failure's status, else 0."""
        failed: int | None = None
        failed_at = 0.0
        while True:
            codes = [p.poll() for p in self.procs]
            if failed is None:
                bad = [c for c in codes if c not in (None, 0)]
                if bad:
                    failed, failed_at = exit_status(bad[0]), time.monotonic()
                    if self.signalled is None:  # failed on its own: end the others
                        self._signal_running(signal.SIGTERM)
            if all(c is not None for c in codes):
                return failed or 0
            alone = failed is not None and self.signalled is None
            if alone and time.monotonic() - failed_at > grace:
                self._signal_running(signal.SIGKILL)
            time.sleep(poll)

    def _signal_running(self, signum: int) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.send_signal(signum)


def exit_status(code: int) -> int:
    """A Popen return code as a shell reports it (a signal's death as 128 + its number)."""
    return 128 - code if code < 0 else code


def launch(
    argv: Sequence[str],
    topo: Topology,
    cpu: bool = False,
    grace: float = 60.0,
    module: str = "dspo.cli.commands",
) -> int:
    """Run ``python -m MODULE ARGV`` (``dspo ARGV``) as this node's processes; their exit
    status (see the module's doc)."""
    previous = {sig: signal.getsignal(sig) for sig in FORWARDED}
    workers = Workers([])
    for sig in FORWARDED:  # set before the first worker starts: no signal is missed
        signal.signal(sig, workers.forward)
    try:
        for local in range(topo.procs_per_node):
            env = worker_env(os.environ, topo, local, cpu)
            workers.procs.append(subprocess.Popen([sys.executable, "-m", module, *argv], env=env))
            if workers.signalled is not None:  # arrived while starting: the new one too
                workers.forward(workers.signalled)
        return workers.wait(grace)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m dspo.training.launch",
        description="Run a dspo command as one process per GPU, on one node or several.",
    )
    parser.add_argument("--procs-per-node", type=int, default=1, help="processes on this node")
    parser.add_argument("--nodes", type=int, default=1, help="nodes in the process group")
    parser.add_argument("--node-rank", type=int, default=0, help="this node's rank")
    parser.add_argument("--main-address", default="127.0.0.1", help="node of rank 0")
    parser.add_argument("--main-port", type=int, default=0, help="0: a free port (one node)")
    parser.add_argument(
        "--slurm", action="store_true", help="node rank, nodes, address and port from SLURM"
    )
    parser.add_argument("--cpu", action="store_true", help="gloo on the CPU (no CUDA)")
    parser.add_argument("--grace", type=float, default=60.0, help="see the module's doc")
    parser.add_argument("--module", default="dspo.cli.commands", help="what each process runs")
    parser.add_argument("command", nargs=argparse.REMAINDER, help="-- then the dspo command")
    args = parser.parse_args(argv)
    args.command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not args.command:
        parser.error("no dspo command given after --")
    if args.procs_per_node < 1 or args.nodes < 1 or not 0 <= args.node_rank < args.nodes:
        parser.error("need --procs-per-node >= 1, --nodes >= 1 and 0 <= --node-rank < --nodes")
    return args


def topology(args: argparse.Namespace) -> Topology:
    """The topology the options (or SLURM's variables, with ``--slurm``) describe."""
    if args.slurm:
        return slurm_topology(os.environ, args.procs_per_node)
    port = args.main_port
    if not port:
        if args.nodes > 1:
            raise ValueError("--main-port is needed with more than one node")
        port = free_port()
    return Topology(args.nodes, args.node_rank, args.procs_per_node, args.main_address, port)


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    try:
        topo = topology(args)
    except (ValueError, subprocess.CalledProcessError) as err:
        sys.exit(f"dspo.training.launch: error: {err}")
    sys.exit(launch(args.command, topo, cpu=args.cpu, grace=args.grace, module=args.module))


if __name__ == "__main__":
    main()
