"""The SLURM profile's site settings (dspo/config/slurm_site.py): the requests each variable makes,
and a bad value named before anything is submitted."""

from __future__ import annotations

import pytest

from dspo.config import slurm_site as site


def test_gpus_style_asks_per_job_and_gres_per_node() -> None:
    env = {"DSPO_SLURM_GPU_MODEL": "a100"}
    assert (site.gpu(4, 1, env), site.gpu_model(4, 1, env), site.gres(4, 1, env)) == (
        4,
        "a100",
        None,
    )
    gres = {**env, "DSPO_SLURM_GPU_STYLE": "gres"}
    assert (site.gpu(4, 1, gres), site.gpu_model(4, 1, gres)) == (None, None)
    assert site.gres(4, 1, gres) == "gpu:a100:4"
    # Several nodes: --gpus would count for the whole job, so GPUs are asked per node.
    assert (site.gpu(4, 2, env), site.gres(4, 2, env)) == (None, "gpu:a100:4")
    assert site.gres(2, 2, {}) == "gpu:2"


def test_unset_knobs_leave_the_request_to_the_cluster() -> None:
    assert site.qos({}) is None and site.constraint("gpu", {}) is None
    assert site.gpu_model(1, 1, {}) is None
    assert (site.train_nodes({}), site.train_gpus({})) == (1, 4)
    assert site.runtime("train", 1440, {}) == 1440
    assert site.train_extra({}) == f"--signal=URG@{site.DEFAULT_SIGNAL_LEAD}"


def test_set_knobs() -> None:
    env = {
        "DSPO_SLURM_QOS": "long",
        "DSPO_SLURM_CPU_CONSTRAINT": "skylake",
        "DSPO_SLURM_RUNTIME_TRAIN": "720",
        "DSPO_TRAIN_SIGNAL_LEAD": "3600",
        "DSPO_TRAIN_NODES": "4",
    }
    assert (site.qos(env), site.constraint("cpu", env)) == ("long", "skylake")
    assert site.runtime("train", 1440, env) == 720 and site.runtime("score", 720, env) == 720
    assert site.train_extra(env) == "--signal=URG@3600" and site.train_nodes(env) == 4


@pytest.mark.parametrize(
    ("name", "value", "message"),
    [
        ("DSPO_TRAIN_NODES", "two", "DSPO_TRAIN_NODES='two': expected a whole number"),
        ("DSPO_TRAIN_GPUS", "0", "DSPO_TRAIN_GPUS='0': expected at least 1"),
        ("DSPO_SLURM_GPU_STYLE", "tres", "DSPO_SLURM_GPU_STYLE='tres': expected one of"),
    ],
)
def test_bad_values_are_named(name: str, value: str, message: str) -> None:
    env = {name: value}
    with pytest.raises(ValueError, match=message):
        site.train_nodes(env), site.train_gpus(env), site.gpu(1, 1, env)
