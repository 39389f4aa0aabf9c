"""The VMs of the pool, as the control plane runs them.

- ``lifecycle.py``: create, start, stop, resize, delete (``VMService``), each call to the agent
  of the VM's host;
- ``admission.py``: what a create or start is checked against besides capacity (ports);
  capacity itself is the scheduler's filters plus the claim (control/placement.py);
- ``reconcile.py``: a pure plan from a VM's record and what its host reports, and what an agent
  event means for a record;
- ``records.py``: rows to model objects and back.
"""

from virtpool.control.vms.lifecycle import (
    DEFAULT_BOOT_TIMEOUT_S,
    DEFAULT_STOP_TIMEOUT_S,
    MAX_EXEC_TIMEOUT_S,
    VMService,
)

__all__ = ["DEFAULT_BOOT_TIMEOUT_S", "DEFAULT_STOP_TIMEOUT_S", "MAX_EXEC_TIMEOUT_S", "VMService"]
