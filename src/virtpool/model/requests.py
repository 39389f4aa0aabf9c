"""How every request body of the API is read: strictly.

Pydantic's default ("lax") mode turns ``"cpus": "2"`` into 2 and ``true`` into 1, so a client
with a bug in its types gets a VM it did not ask for instead of an answer that names the
field. Strict mode takes a number only as a JSON number, a boolean only as true/false and a
list only as a list; an enum field still takes its value as a string (``Field(strict=False)``
on it), because JSON has no other way to write one.
"""

from __future__ import annotations

from pydantic import ConfigDict

# The config of a request body: unknown fields and loosely typed values are refused.
REQUEST = ConfigDict(extra="forbid", strict=True)
# The same for a value that is hashed or kept in a set once read.
FROZEN_REQUEST = ConfigDict(extra="forbid", strict=True, frozen=True)
