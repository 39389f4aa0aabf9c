"""How the control plane reaches hosts: the registry (host name -> agent) and the remote agent."""
