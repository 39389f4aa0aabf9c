"""The pool's Prometheus metrics: what /metrics shows, built with prometheus-client.

Names follow Prometheus's rules (base units: bytes and seconds; ``_total`` for counters) and the
only labels are vm, host, project, state and resource, so that the number of series grows with
VMs and hosts, never with requests. Figures are read at scrape time: hosts and VM counts from
the database (the same for every server sharing it), VM counters from the usage history's last
samples (also in the database, sampled by the leader from every host's agent).

A scrape is one ``Scrape`` made for its caller: a project's token sees its own project's VMs
only, and the control plane's own histograms only go to pool-wide tokens.
"""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client import Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.exposition import generate_latest
from prometheus_client.registry import CollectorRegistry
from virtpool.control.hosts import HostService
from virtpool.control.summary import Summary
from virtpool.control.usage_history import UsageRecorder
from virtpool.model.states import VMState

MIB = 1024 * 1024
# API calls take milliseconds to (long polls, uploads) minutes.
REQUEST_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0)
# A placement on 10,000 hosts takes milliseconds (bench/scheduler.py).
PLACEMENT_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0)


class ControlPlaneMetrics:
    """The histograms the control plane observes as it works (this process only)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.request_seconds = Histogram(
            "virtpool_api_request_duration_seconds", "Time to answer an API request",
            buckets=REQUEST_BUCKETS, registry=self.registry)
        self.placement_seconds = Histogram(
            "virtpool_placement_duration_seconds", "Time to place a VM and claim its host",
            buckets=PLACEMENT_BUCKETS, registry=self.registry)


class PoolCollector:
    """Hosts, VM counts, operations and VM counters, as ``project`` (None: every project) sees them."""

    def __init__(self, summary: Summary, hosts: HostService, usage: UsageRecorder,
                 project: str | None) -> None:
        self._summary = summary
        self._hosts = hosts
        self._usage = usage
        self._project = project

    def collect(self) -> Iterator[Metric]:
        yield from self._host_metrics()
        yield from self._counts()
        yield from self._vm_metrics()

    def _host_metrics(self) -> Iterator[Metric]:
        labels = ["host", "resource"]
        capacity = GaugeMetricFamily("virtpool_host_capacity", "What a host has for VMs (total minus "
                                     "its reservation): cpu in CPUs, memory and disk in bytes", labels=labels)
        allocatable = GaugeMetricFamily("virtpool_host_allocatable", "What a host may promise, its "
                                        "capacity times its allocation ratio", labels=labels)
        allocated = GaugeMetricFamily("virtpool_host_allocated", "What a host's VMs have claimed", labels=labels)
        used = GaugeMetricFamily("virtpool_host_used", "What a host's running VMs use now, as last "
                                 "sampled: CPUs busy, QEMU resident memory, data disk bytes used", labels=labels)
        state = GaugeMetricFamily("virtpool_host_state", "1 for the state the host is in", labels=["host", "state"])
        for host in self._hosts.list(self._project):
            for resource, figures, unit in (("cpu", host.cpus, 1), ("memory", host.memory_mib, MIB),
                                            ("disk", host.disk_mib, MIB)):
                capacity.add_metric([host.name, resource], figures.physical * unit)
                allocatable.add_metric([host.name, resource], figures.capacity * unit)
                allocated.add_metric([host.name, resource], figures.allocated * unit)
            state.add_metric([host.name, host.state], 1)
        for use in self._usage.host_use(self._project):
            used.add_metric([use.host, "cpu"], use.cpu_used)
            used.add_metric([use.host, "memory"], use.memory_used_mib * MIB)
            if use.disk_used_mib is not None:
                used.add_metric([use.host, "disk"], use.disk_used_mib * MIB)
        yield from (capacity, allocatable, allocated, used, state)

    def _counts(self) -> Iterator[Metric]:
        vms = GaugeMetricFamily("virtpool_vms", "VMs by state", labels=["project", "state"])
        ops = GaugeMetricFamily("virtpool_operations", "Operations recorded, by outcome "
                                "(pending, running, succeeded, failed)", labels=["project", "state"])
        counted = self._summary.vms_by_state(self._project)
        projects = {project for project, _ in counted} or ({self._project} if self._project else set())
        # Every state, zeros included: a series that vanishes at zero breaks alerts on it.
        for project in sorted(projects):
            for vm_state in VMState:
                vms.add_metric([project, vm_state.value], counted.get((project, vm_state.value), 0))
        for (project, status), n in sorted(self._summary.operations_by_status(self._project).items(),
                                           key=lambda item: (item[0][0] or "", item[0][1])):
            ops.add_metric([project or "", status], n)
        yield from (vms, ops)

    def _vm_metrics(self) -> Iterator[Metric]:
        labels = ["vm", "project", "host"]
        families = {
            "cpu": CounterMetricFamily("virtpool_vm_cpu_seconds", "CPU time the VM's QEMU used", labels=labels),
            "memory": GaugeMetricFamily("virtpool_vm_memory_bytes", "Memory the guest has (after the "
                                        "balloon)", labels=labels),
            "rss": GaugeMetricFamily("virtpool_vm_memory_rss_bytes", "Resident memory of the VM's QEMU",
                                     labels=labels),
            "rd": CounterMetricFamily("virtpool_vm_disk_read_bytes", "Bytes the guest read from its disk",
                                      labels=labels),
            "wr": CounterMetricFamily("virtpool_vm_disk_written_bytes", "Bytes the guest wrote to its disk",
                                      labels=labels),
            "rdo": CounterMetricFamily("virtpool_vm_disk_read_ops", "Read requests to the disk", labels=labels),
            "wro": CounterMetricFamily("virtpool_vm_disk_write_ops", "Write requests to the disk", labels=labels),
            "rx": CounterMetricFamily("virtpool_vm_network_receive_bytes", "Bytes the guest received",
                                      labels=labels),
            "tx": CounterMetricFamily("virtpool_vm_network_transmit_bytes", "Bytes the guest sent",
                                      labels=labels),
            "rxp": CounterMetricFamily("virtpool_vm_network_receive_packets", "Packets the guest received",
                                       labels=labels),
            "txp": CounterMetricFamily("virtpool_vm_network_transmit_packets", "Packets the guest sent",
                                       labels=labels),
        }
        for entry in self._usage.latest(self._project):
            stats = entry.stats
            values = {"cpu": stats.cpu_time_s,
                      "memory": None if stats.balloon_mib is None else stats.balloon_mib * MIB,
                      "rss": None if stats.qemu_rss_mib is None else stats.qemu_rss_mib * MIB,
                      "rd": stats.disk_read_bytes, "wr": stats.disk_written_bytes,
                      "rdo": stats.disk_read_ops, "wro": stats.disk_write_ops,
                      "rx": stats.net_rx_bytes, "tx": stats.net_tx_bytes,
                      "rxp": stats.net_rx_packets, "txp": stats.net_tx_packets}
            for key, value in values.items():
                if value is not None:  # unknown is absent, never a made-up zero
                    families[key].add_metric([entry.name, entry.project, entry.host], value)
        yield from families.values()


class Scrape:
    """The collectors of one scrape, as the registry ``generate_latest`` expects."""

    def __init__(self, *collectors: PoolCollector | CollectorRegistry) -> None:
        self._collectors = collectors

    def collect(self) -> Iterator[Metric]:
        for collector in self._collectors:
            yield from collector.collect()

    def render(self) -> bytes:
        return generate_latest(self)  # type: ignore[arg-type]
