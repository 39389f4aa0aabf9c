"""One sentence for every placement: why this host, or why no host at all.

Built only from a ``Decision``'s counters, so the sentence a user reads and the numbers the tests
check cannot drift apart. Example::

    no host can take 'web3': 7 hosts lack memory (needs 2048 MiB, largest free 1024 MiB),
    3 are excluded by anti-affinity group 'web'
"""

from __future__ import annotations

from virtpool.control.scheduler import filters as f
from virtpool.control.scheduler.pipeline import FILTER_NAMES, Decision
from virtpool.model.errors import InsufficientResources
from virtpool.model.resources import PlacementRequest

# How a state reads after "N are …", in the order of HOST_STATES.
_STATE_WORDS = {"draining": "draining", "maintenance": "in maintenance", "down": "down",
                "unreachable": "unreachable"}


def _verb(count: int, singular: str, plural: str) -> str:
    return singular if count == 1 else plural


def _capacity_phrase(count: int, decision: Decision, name: str) -> str:
    request = decision.request
    largest = decision.largest_free.get(name)
    lack = _verb(count, "lacks", "lack")
    if name == "cpu":
        detail = f"needs {request.cpus}"
        if largest is not None:
            detail += f", largest free {largest}"
        return f"{lack} vCPUs ({detail})"
    needed = request.memory_mib if name == "memory" else request.disk_mib
    detail = f"needs {needed} MiB"
    if largest is not None:
        detail += f", largest free {largest} MiB"
    return f"{lack} {name} ({detail})"


def _phrase(name: str, count: int, decision: Decision) -> str:
    """What the hosts removed by stage ``name`` are, after "N hosts" / "N"."""
    request: PlacementRequest = decision.request
    be = _verb(count, "is", "are")
    if name == f.EXCLUDED:
        return f"{_verb(count, 'was', 'were')} already tried for this placement"
    if name == f.PINNED.name:
        return f"{be} not host '{request.host}', which the VM is pinned to"
    if name == f.HOST_STATE.name:
        states = ", ".join(f"{k} {_STATE_WORDS.get(state, state)}"
                           for state, k in decision.not_up.items())
        return f"{be} not up" + (f" ({states})" if states else "")
    if name == f.ACCELERATOR.name:
        return f"{_verb(count, 'lacks', 'lack')} {(request.accel or '').upper()}"
    if name == f.PROJECT.name:
        if request.project is None:
            return f"{be} reserved for particular projects"
        return f"{be} closed to project '{request.project}'"
    if name == f.LABELS.name:
        pairs = ", ".join(f"{k}={v}" for k, v in request.required_labels.items())
        noun = "label" if len(request.required_labels) == 1 else "labels"
        return f"{_verb(count, 'lacks', 'lack')} {noun} {pairs}"
    if name == f.GROUP.name and request.group is not None:
        rule = request.group
        if rule.policy == "anti-affinity":
            return f"{be} excluded by anti-affinity group '{rule.name}'"
        return f"{be} outside affinity group '{rule.name}'"
    if name == f.SIZE.name:
        cpus = max(request.cpus, request.host_cpus)
        return (f"{_verb(count, 'has', 'have')} too few CPUs (needs {cpus}, the largest has "
                f"{decision.largest_free.get('size', 0)})")
    if name in f.CAPACITY_FILTERS:
        return _capacity_phrase(count, decision, name)
    return f"{be} removed by {name}"


def reasons(decision: Decision) -> list[str]:
    """Each stage that removed hosts, as "N hosts …", largest count first (stage order on ties).

    The first item says "hosts"; the rest leave the noun out, as a sentence would.
    """
    order = {name: i for i, name in enumerate(FILTER_NAMES)}
    counted = sorted(((name, n) for name, n in decision.removed.items() if n),
                     key=lambda item: (-item[1], order.get(item[0], len(order))))
    parts = []
    for position, (name, count) in enumerate(counted):
        noun = "" if position else (" host" if count == 1 else " hosts")
        parts.append(f"{count}{noun} {_phrase(name, count, decision)}")
    return parts


def explain(decision: Decision) -> str:
    """The one sentence a user sees for this decision."""
    vm = decision.request.vm
    if decision.placed:
        if decision.candidates is None:  # placed without counting (place(counts=False))
            return f"placed '{vm}' on host '{decision.host}' ({decision.weigher})"
        of = f"{decision.candidates} of {decision.hosts_total}"
        return (f"placed '{vm}' on host '{decision.host}' "
                f"({decision.weigher}; {of} hosts could take it)")
    if decision.hosts_total == 0:
        return f"no host can take '{vm}': the pool has no hosts"
    pin = decision.request.host
    if pin is not None:
        # Pinned: only that host counts; say what keeps it from taking the VM.
        why = [f"it {_phrase(name, 1, decision)}" for name in FILTER_NAMES
               if name != f.PINNED.name and decision.removed.get(name)]
        return f"host '{pin}' cannot take '{vm}': " + ", ".join(why or ["it is not in the pool"])
    return f"no host can take '{vm}': " + ", ".join(reasons(decision))


def _growth_phrase(name: str, decision: Decision) -> str:
    """Why the VM's host cannot take a resize (a ``growth`` request), after "it"."""
    request = decision.request
    if name == f.SIZE.name:
        return (f"has too few CPUs (the VM's new shape needs {request.host_cpus}, it has "
                f"{decision.largest_free.get('size', 0)})")
    free = decision.largest_free.get(name, 0)
    if name == "cpu":
        return f"lacks vCPUs (needs {request.cpus} more, {free} free)"
    needed = request.memory_mib if name == "memory" else request.disk_mib
    return f"lacks {name} (needs {needed} MiB more, {free} MiB free)"


def explain_growth(decision: Decision) -> str:
    """The sentence for a resize its host refused."""
    request = decision.request
    why = [f"it {_growth_phrase(name, decision)}" for name in FILTER_NAMES
           if name != f.PINNED.name and decision.removed.get(name)]
    return (f"host '{request.host}' has no room to grow VM '{request.vm}' under its ratios: "
            + ", ".join(why or ["it is not in the pool"]))


def refusal(decision: Decision) -> InsufficientResources:
    """The error to raise for a refused placement (or resize), with the sentence and a next step."""
    if decision.placed:
        raise ValueError("refusal() of a placed decision")  # a programming error, not a user's
    if decision.request.growth:
        if decision.removed[f.SIZE.name]:
            hint = "ask for fewer vCPUs (or CPUs in --cpu-affinity, a lower --cpu-cap)"
        else:
            hint = "ask for less, free room on the host (`virtpool host list`), or raise its ratios"
        return InsufficientResources(explain_growth(decision), hint=hint)
    removed = decision.removed
    if removed[f.SIZE.name] and not any(removed[name] for name in f.CAPACITY_FILTERS):
        hint = "ask for fewer vCPUs (or CPUs in --cpu-affinity, a lower --cpu-cap), or add a larger host"
    elif any(removed[name] for name in f.CAPACITY_FILTERS):
        hint = "free room (stop or shrink VMs), add a host, or raise the host's ratios"
    elif removed[f.HOST_STATE.name]:
        hint = "bring a host back up (`virtpool host list` shows their states)"
    else:
        hint = "relax the VM's constraints (labels, group, accelerator) or add a matching host"
    if decision.request.host is not None:
        hint += "; or pin it to another host (`virtpool host list`), or drop --host"
    return InsufficientResources(explain(decision), hint=hint)
