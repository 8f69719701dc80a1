"""engine.devices: the one device list, names checked without torch, ranks on their own GPUs."""

from __future__ import annotations

import pytest
import torch

from engine import devices
from engine.devices import DEVICES, check_device_name, local_rank, resolve_device
from engine.errors import SpecError


@pytest.mark.parametrize("name", ["auto", "cpu", "cuda", "cuda:0", "cuda:12"])
def test_the_listed_names_and_gpus_by_index_pass(name):
    assert check_device_name(name) == name


@pytest.mark.parametrize("name", ["gpu", "tpu", "mps", "cuda:", "cuda:-1", "cuda:x", "CPU", "", 0, None])
def test_anything_else_is_a_spec_error_listing_the_names(name):
    with pytest.raises(SpecError, match="use auto, cpu, cuda or cuda:N"):
        check_device_name(name)
    assert DEVICES == ("auto", "cpu", "cuda")


def test_cpu_and_auto_without_cuda(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device("auto") == torch.device("cpu")
    assert resolve_device("auto", rank=3) == torch.device("cpu")
    with pytest.raises(SpecError, match="no CUDA; use cpu"):
        resolve_device("cuda")
    with pytest.raises(SpecError, match="unknown device"):
        resolve_device("gpu")


def test_each_rank_takes_its_own_gpu(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 4)
    assert resolve_device("auto") == torch.device("cuda")
    assert resolve_device("auto", rank=2) == torch.device("cuda", 2)
    assert resolve_device("cuda", rank=5) == torch.device("cuda", 1)
    assert resolve_device("cuda:3", rank=1) == torch.device("cuda", 3)  # an explicit index is kept
    assert resolve_device("cpu", rank=1) == torch.device("cpu")


def test_local_rank_is_torchruns(monkeypatch):
    monkeypatch.delenv("LOCAL_RANK", raising=False)
    assert local_rank() is None
    monkeypatch.setenv("LOCAL_RANK", "3")
    assert devices.local_rank() == 3


def test_specs_offer_the_same_list_to_the_viewer():
    from engine import specs

    assert specs.DEVICES is DEVICES
