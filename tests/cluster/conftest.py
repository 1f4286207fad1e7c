"""One local Ray instance for the cluster tests (2 CPUs, no network, no dashboard), shut down after
them so that the rest of the suite runs without Ray's processes."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

ray = pytest.importorskip("ray")


@pytest.fixture(scope="module")
def ray_instance(tmp_path_factory):
    from recstack.cluster import RaySettings, connect

    markers = tmp_path_factory.mktemp("ray-markers")
    # the workers inherit the environment of the instance: tests/ (for cluster.faulty) and the marker folder
    here = str(Path(__file__).parents[1])
    saved = {name: os.environ.get(name) for name in ("PYTHONPATH", "RECSTACK_TEST_MARKERS")}
    os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [here, saved["PYTHONPATH"]]))
    os.environ["RECSTACK_TEST_MARKERS"] = str(markers)
    if ray.is_initialized():
        ray.shutdown()
    connect(RaySettings(workers=2))
    yield markers
    ray.shutdown()
    for name, value in saved.items():
        if value is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = value
