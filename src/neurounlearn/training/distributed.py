"""Multi-process training: which process this is, and what each one does.

A run on several devices or nodes is one process per device, started by Lightning's own launcher
(``train.devices=N``: the command is run again once per extra device), by ``torchrun`` or by
SLURM's ``srun``. Every process reads the same manifest, makes the same split from the same seed
and trains its share of each batch under Lightning's DDP strategy; only the first process (global
rank 0) checks and creates the run directory, writes its files and evaluates the run. The others
-- followers -- write nothing and print nothing.

Examples:
    >>> is_follower()  # run alone
    False
"""

from __future__ import annotations

import os
import re
from typing import Any

#: the environment variables that give a process's global rank (``RANK``: torchrun;
#: ``SLURM_PROCID``: srun; ``JSM_NAMESPACE_RANK``: LSF), read in Lightning's order
RANK_VARIABLES = ("RANK", "SLURM_PROCID", "JSM_NAMESPACE_RANK")
#: ... and those that place it on its node and its node in the job (Lightning's launcher sets
#: ``LOCAL_RANK`` for each process it starts; ``NODE_RANK`` or torchrun's ``GROUP_RANK`` the node)
PLACE_VARIABLES = ("LOCAL_RANK", "NODE_RANK", "GROUP_RANK")


def _number(name: str) -> int | None:
    value = os.environ.get(name, "").strip()
    return int(value) if value.isdigit() else None


def is_follower() -> bool:
    """Whether this process is a follower of a multi-process run: not the first process of the
    first node. Followers train their share of every batch and write nothing.

    Read from the environment the launcher sets, so it is known before Lightning starts (the run
    directory is decided before training): the global rank where the launcher gives one,
    otherwise the process's place on its node and its node's place in the job.
    """
    for name in RANK_VARIABLES:
        rank = _number(name)
        if rank is not None:
            return rank > 0
    return any((_number(name) or 0) > 0 for name in PLACE_VARIABLES)


#: what tells a process that a launcher placed it in a job spanning machines
CLUSTER_VARIABLES = ("MASTER_ADDR", "SLURM_NTASKS", "TORCHELASTIC_RUN_ID", "LSB_JOBID")


def process_count(devices: int | str, accelerator: str) -> int:
    """Processes per node that ``train.devices`` asks for, counted as Lightning counts them: a
    number, the device indices given (``"0,1"``), or for ``-1``/``auto`` the GPUs there are
    (``-1`` on the CPU: its cores; ``auto`` on the CPU: one)."""
    text = str(devices).strip()
    if re.fullmatch(r"\d+", text):
        return int(text)
    if text not in ("-1", "auto"):
        return len([part for part in text.split(",") if part.strip()])  # device indices "0,1"
    import torch

    gpu = accelerator in ("gpu", "cuda") or (accelerator == "auto" and torch.cuda.is_available())
    if gpu:
        return max(torch.cuda.device_count(), 1)
    return (os.cpu_count() or 1) if text == "-1" else 1


def lightning_strategy(strategy: str, processes: int, num_nodes: int) -> Any:
    """What ``train.strategy`` hands Lightning. ``auto`` with more than one process is DDP that
    looks for unused parameters: each of an unlearning step's backward passes reaches only part
    of the model (the task step leaves the heads alone, the adversary step the encoder)."""
    if strategy == "auto" and (num_nodes > 1 or processes > 1):
        return "ddp_find_unused_parameters_true"
    return strategy


def in_cluster() -> bool:
    """Whether a launcher (torchrun, srun, LSF or a hand-set ``MASTER_ADDR``) started this
    process, so a run over several machines can find its peers."""
    return any(os.environ.get(name) for name in CLUSTER_VARIABLES)
