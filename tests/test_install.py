"""The install step itself: a CPU machine must not get CUDA wheels."""

from importlib.metadata import distributions, version

import pytest
import torch

pytestmark = pytest.mark.unit


def test_torch_is_the_pinned_release():
    assert version("torch").split("+")[0] == "2.13.0"


@pytest.mark.skipif(torch.version.cuda is not None, reason="a CUDA build of torch brings nvidia-* wheels by design")
def test_no_nvidia_wheels_on_a_cpu_install():
    nvidia = sorted(d.metadata["Name"] for d in distributions() if d.metadata["Name"].lower().startswith("nvidia"))
    assert nvidia == []
