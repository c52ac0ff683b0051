"""The hardware catalog: every number carries its source; lookups name what they know."""

import dataclasses

import pytest

from nemodeploy.topology.catalog import ACCELERATORS, NETWORKS, Accelerator, accelerator, network

SOURCED = ("memory_bytes", "memory_bandwidth_bytes_s", "dense_tflops", "native_fp8", "native_fp4",
           "intra_node_bandwidth_bytes_s")
KINDS = {"gb200", "b200", "gb300", "b300", "h100-sxm", "h100", "h200", "gb10", "mi300x", "mi355x", "a100-80gb", "cpu"}


def test_the_catalog_holds_the_accelerators_the_seeds_deploy_on():
    assert KINDS <= set(ACCELERATORS)
    assert {"roce-200g", "roce-400g", "ib-ndr-400g", "ib-xdr-800g", "ethernet-100g", "ethernet-25g", "loopback"} <= set(
        NETWORKS
    )


@pytest.mark.parametrize("kind", sorted(ACCELERATORS))
def test_every_accelerator_number_names_its_source(kind):
    a = ACCELERATORS[kind]
    for name in SOURCED:
        assert a.sources.get(name, "").strip(), f"{kind}.{name} has no source"
    assert a.memory_bytes > 0 and a.memory_bandwidth_bytes_s > 0
    assert set(a.dense_tflops) <= {"fp32", "bf16", "fp8", "fp4"} and "bf16" in a.dense_tflops
    assert a.native_fp8 == ("fp8" in a.dense_tflops) and a.native_fp4 == ("fp4" in a.dense_tflops)


@pytest.mark.parametrize("kind", sorted(NETWORKS))
def test_every_network_names_its_source(kind):
    n = NETWORKS[kind]
    assert n.source.strip() and n.bandwidth_bytes_s > 0 and n.latency_s > 0


def test_the_vendor_figures_planning_depends_on():
    assert accelerator("h100").memory_bytes == 80 * 2**30 and not accelerator("h100").native_fp4
    assert accelerator("h200").memory_bytes == 141 * 2**30
    assert accelerator("b200").memory_bytes * 8 == 1440 * 2**30
    assert accelerator("mi300x").memory_bytes == 192 * 2**30 and not accelerator("mi300x").native_fp4
    assert not accelerator("a100-80gb").native_fp8
    spark = accelerator("gb10")
    # the 128 GiB are shared with the OS: CUDA reports 121.69 GiB (vllm recipes PR 632)
    assert spark.unified_memory and round(spark.memory_bytes / 2**30, 2) == 121.69
    assert spark.memory_bandwidth_bytes_s == 273e9
    assert network("roce-200g").bandwidth_bytes_s == 25e9  # 200 Gb/s


def test_the_cpu_entry_describes_this_machine():
    import psutil

    cpu = accelerator("CPU")
    assert cpu.memory_bytes == psutil.virtual_memory().total
    assert "psutil" in cpu.sources["memory_bytes"] and "assumption" in cpu.sources["memory_bandwidth_bytes_s"]


def test_lookups_are_case_insensitive_and_h100_is_the_sxm_part():
    assert accelerator("H100") is accelerator("h100-sxm")
    assert network("IB-NDR-400G") is NETWORKS["ib-ndr-400g"]


def test_unknown_kinds_list_the_known_ones():
    with pytest.raises(KeyError, match="known: .*b200.*h200"):
        accelerator("tpu-v5")
    with pytest.raises(KeyError, match="known: .*ib-ndr-400g.*roce-200g"):
        network("carrier-pigeon")


def test_entries_are_immutable():
    with pytest.raises(dataclasses.FrozenInstanceError):
        accelerator("b200").memory_bytes = 1  # type: ignore[misc]
    assert isinstance(ACCELERATORS["gb200"], Accelerator)
