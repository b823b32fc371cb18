"""`--processes N`: what each gateway process's settings become (`GatewayConfig.for_process`)."""

from __future__ import annotations

import pytest

from smg.config import GatewayConfig
from smg.config.server import available_cores, process_count
from smg.settings import ConfigError


def test_counts() -> None:
    assert process_count("3") == 3
    assert process_count("auto") == available_cores() >= 1
    for bad in ("0", "-1", "two", ""):
        with pytest.raises(ConfigError, match="--processes must be a positive number or 'auto'"):
            process_count(bad)


def test_without_ha_mesh_the_siblings_mesh_on_the_loopback() -> None:
    parent = GatewayConfig(processes="3", mesh_port=40000, prometheus_port=29000, mesh_server_name="gw")
    child = parent.for_process(1)
    assert (child.processes, child.process_index, child.is_process) == ("1", 1, True)
    assert child.ha_mesh and child.mesh_port == 40001 and child.prometheus_port == 29001
    assert child.mesh_host == child.mesh_advertise_host == "127.0.0.1"
    assert child.mesh_seeds == ("127.0.0.1:40000", "127.0.0.1:40002")
    assert child.mesh_server_name == "gw-1"
    assert child.port == parent.port and not parent.is_process


def test_with_ha_mesh_the_siblings_join_the_cluster_too() -> None:
    parent = GatewayConfig(processes="2", ha_mesh=True, mesh_host="10.0.0.5", mesh_port=40000, mesh_seeds=("10.0.0.9:39527",))
    child = parent.for_process(0)
    assert child.mesh_seeds == ("10.0.0.9:39527", "10.0.0.5:40001")
    assert child.mesh_host == "10.0.0.5" and child.mesh_advertise_host is None  # as the operator set them
    wildcard = GatewayConfig(processes="2", ha_mesh=True, mesh_port=40000).for_process(1)
    assert wildcard.mesh_seeds == ("127.0.0.1:40000",)  # bound to every address: the siblings on the loopback
    assert GatewayConfig(processes="2", prometheus_port=0).for_process(1).prometheus_port == 0  # any free port


def test_ports_the_processes_need_fixed() -> None:
    with pytest.raises(ConfigError, match="fixed --mesh-port"):
        GatewayConfig(processes="2", mesh_port=0)
    with pytest.raises(ConfigError, match="fixed --port"):
        GatewayConfig(processes="2", port=0)
    GatewayConfig(processes="2", port=0, process_index=1)  # a process itself: the parent checked
