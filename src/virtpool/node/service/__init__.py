"""`virtpool agent`: this host's agent (node/agent.py) served over HTTPS to the pool's control
plane, with the enrolment that gives it a certificate of the pool CA and the heartbeats that
keep its lease.

- ``identity.py``: the agent's key and certificate; enrolment with a join token on first start;
- ``app.py``: the HTTPS API over ``LocalAgent`` (callers: the control plane's certificate only);
- ``heartbeat.py``: heartbeats to the control plane, which answer with revoked serials;
- ``run.py``: wiring, for the CLI.

Nothing here imports the control plane: the two ends share only ``model`` and ``mtls``.
"""
