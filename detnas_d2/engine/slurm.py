"""Launch arguments from SLURM's environment (one `srun` task per node, see tools/slurm_train.sbatch).

Under `srun` (SLURM_JOB_ID and SLURM_PROCID set): num_machines = number of nodes of the step (or job),
machine_rank = SLURM_NODEID, dist_url = tcp://<first host of the node list>:<port>, the port from
MASTER_PORT or else derived from SLURM_JOB_ID (the same on every node, different for concurrent jobs).
"""

import re
import zlib
from typing import Dict, List, Mapping, Optional

__all__ = ["expand_nodelist", "slurm_launch_args", "apply_slurm_env"]

_PORT_BASE, _PORT_SPAN = 20000, 20000


def _split_top_level(text: str) -> List[str]:
    """Split at commas outside brackets: 'a[1-2],b3' -> ['a[1-2]', 'b3']."""
    parts, depth, start = [], 0, 0
    for i, ch in enumerate(text):
        if ch == "[":
            depth += 1
        elif ch == "]":
            depth -= 1
            if depth < 0:
                raise ValueError(f"SLURM node list '{text}': unmatched ']' at position {i}")
        elif ch == "," and depth == 0:
            parts.append(text[start:i])
            start = i + 1
    if depth:
        raise ValueError(f"SLURM node list '{text}': unmatched '['")
    parts.append(text[start:])
    return parts


def _expand_ranges(ranges: str, nodelist: str) -> List[str]:
    """'01-03,07' -> ['01', '02', '03', '07'], zero padding kept."""
    out = []
    for item in ranges.split(","):
        m = re.fullmatch(r"(\d+)(?:-(\d+))?", item.strip())
        if not m:
            raise ValueError(f"SLURM node list '{nodelist}': bad range '{item}' in brackets")
        first, last = m.group(1), m.group(2) or m.group(1)
        if int(last) < int(first):
            raise ValueError(f"SLURM node list '{nodelist}': descending range '{item}'")
        width = len(first)
        out.extend(str(n).zfill(width) for n in range(int(first), int(last) + 1))
    return out


def _expand_host(pattern: str, nodelist: str) -> List[str]:
    """Expand every bracket group of one host pattern: 'gpu-[001-002]-x' -> ['gpu-001-x', 'gpu-002-x']."""
    m = re.search(r"\[([^\[\]]*)\]", pattern)
    if not m:
        return [pattern]
    head, tail = pattern[: m.start()], pattern[m.end() :]
    return [
        h
        for mid in _expand_ranges(m.group(1), nodelist)
        for h in _expand_host(head + mid + tail, nodelist)
    ]


def expand_nodelist(nodelist: str) -> List[str]:
    """Host names of a SLURM node list: 'node[01-04,07]', 'a[1-2],b3', 'gpu-[001-003]-x', 'host'."""
    nodelist = nodelist.strip()
    if not nodelist:
        raise ValueError("SLURM node list is empty")
    hosts = []
    for part in _split_top_level(nodelist):
        if not part:
            raise ValueError(f"SLURM node list '{nodelist}': empty entry")
        hosts.extend(_expand_host(part, nodelist))
    return hosts


def _port(env: Mapping[str, str]) -> int:
    if env.get("MASTER_PORT"):
        return int(env["MASTER_PORT"])
    job_id = env["SLURM_JOB_ID"]
    # Deterministic on every node: the job id itself when numeric, else a CRC of it (never hash()).
    key = int(job_id) if job_id.isdigit() else zlib.crc32(job_id.encode())
    return _PORT_BASE + key % _PORT_SPAN


def slurm_launch_args(env: Mapping[str, str]) -> Optional[Dict]:
    """{num_machines, machine_rank, dist_url} for a process started by `srun`, None outside SLURM.

    Expects one task per node (this process starts one worker per GPU itself).
    """
    if "SLURM_JOB_ID" not in env or "SLURM_PROCID" not in env:
        return None
    num_nodes = int(env.get("SLURM_STEP_NUM_NODES") or env["SLURM_NNODES"])
    num_tasks = int(env.get("SLURM_STEP_NUM_TASKS") or env.get("SLURM_NTASKS") or num_nodes)
    if num_tasks != num_nodes:
        raise ValueError(
            f"SLURM runs {num_tasks} tasks on {num_nodes} nodes, but train_net.py starts one process per "
            "GPU itself: run one task per node (srun --ntasks-per-node=1, see tools/slurm_train.sbatch)"
        )
    nodelist = (
        env.get("SLURM_STEP_NODELIST") or env.get("SLURM_JOB_NODELIST") or env["SLURM_NODELIST"]
    )
    hosts = expand_nodelist(nodelist)
    if len(hosts) != num_nodes:
        raise ValueError(
            f"SLURM node list '{nodelist}' names {len(hosts)} hosts, SLURM says {num_nodes} nodes"
        )
    return {
        "num_machines": num_nodes,
        "machine_rank": int(env.get("SLURM_NODEID", 0)),
        "dist_url": f"tcp://{hosts[0]}:{_port(env)}",
    }


def apply_slurm_env(args, env: Mapping[str, str], defaults: Mapping[str, object]):
    """Fill `args.num_machines`, `args.machine_rank`, `args.dist_url` left at None: from SLURM when
    running under `srun`, else from `defaults`. Values given on the command line are kept."""
    slurm = slurm_launch_args(env) or {}
    for key in ("num_machines", "machine_rank", "dist_url"):
        if getattr(args, key) is None:
            setattr(args, key, slurm.get(key, defaults[key]))
    return args
