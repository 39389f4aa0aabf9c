"""Host isolation of one VM's QEMU process, one module per mechanism (as Firecracker's jailer).

- ``cgroups``: a control group per VM: CPU weight, CPU cap, CPU pinning, memory limit, usage.
  cgroup v1 (one hierarchy per controller) and v2 (unified), detected at runtime.
- ``users``: an unprivileged uid/gid per VM when virtpool runs as root; ownership and modes of
  the VM's files; the ``subprocess`` arguments that start QEMU as that user.
- ``seccomp``: QEMU's own ``-sandbox`` syscall filter, as an argv fragment.

Nothing here knows about VM states, QMP or the control plane; the agent decides when to call
what. Nothing here kills a process.
"""
