"""The host's side of VM networking: the default network (passt), the guard that keeps guests
off the host, and virtpool networks (bridges, VXLAN, taps, nftables, dnsmasq)."""
