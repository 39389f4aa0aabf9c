"""What `virtpool vm exec` streams, checked through the real CLI: one set of checks for a VM on
the server's own host (test_cli_vm.py) and one on a remote agent's (test_remote_vm.py).

(One exec at a time per VM: qemu-ga serves one client, so a check cannot signal the guest
through a second exec; the guest's own `sleep` paces it.)"""

from __future__ import annotations

import hashlib
import os
import select
import subprocess

from tests.conftest import VIRTPOOL

LINE_WAIT_S = 120.0  # for a line the guest writes at once (a loaded machine is slow)


def _line(proc: subprocess.Popen[bytes], timeout: float = LINE_WAIT_S) -> bytes:
    """The next line of the command's stdout, failing after ``timeout`` seconds."""
    assert proc.stdout is not None
    ready, _, _ = select.select([proc.stdout], [], [], timeout)
    assert ready, f"no output within {timeout:g}s"
    return proc.stdout.readline()


def _exec(env: dict[str, str], vm: str, script: str, **kwargs: object) -> subprocess.Popen[bytes]:
    return subprocess.Popen([VIRTPOOL, "vm", "exec", vm, "--timeout", "120", "--", "sh", "-c", script],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, **kwargs)  # type: ignore[call-overload]


def check_output_streams_back(env: dict[str, str], vm: str) -> None:
    """stdout and stderr come while the command runs: without streaming both lines would come
    together at the end; streamed, the second is still 8 s away when the first has been read."""
    proc = _exec(env, vm, "echo first; echo to-stderr >&2; sleep 8; echo second; exit 4",
                 stdin=subprocess.DEVNULL)
    try:
        assert _line(proc) == b"first\n"
        waiting, _, _ = select.select([proc.stdout], [], [], 0)
        assert waiting == [] and proc.poll() is None  # nothing more yet: the command still runs
        out, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert (out, err, proc.returncode) == (b"second\n", b"to-stderr\n", 4)


def check_input_streams_in(env: dict[str, str], vm: str) -> None:
    """Piped input reaches the command while it runs: each line typed into the pipe comes back
    answered before the next is written and before the pipe is closed."""
    proc = _exec(env, vm, 'while read -r line; do echo "got $line"; done; echo "end of input"',
                 stdin=subprocess.PIPE)
    assert proc.stdin is not None
    try:
        for word in (b"one", b"two", b"three"):
            proc.stdin.write(word + b"\n")
            proc.stdin.flush()
            assert _line(proc) == b"got " + word + b"\n"
            assert proc.poll() is None  # the input is still open: the command still runs
        proc.stdin.close()
        proc.stdin = None  # closed: communicate() only reads what is left
        out, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert (out, proc.returncode) == (b"end of input\n", 0), err


def check_large_input_arrives_whole(env: dict[str, str], vm: str) -> None:
    """Half a megabyte of random bytes through a reader that starts late (the guest's pipe
    fills and the rest waits): every byte arrives once, in order."""
    data = os.urandom(512 * 1024 + 123)
    proc = _exec(env, vm, 'sleep 3; f=/tmp/input-check; cat >"$f"; md5sum <"$f"; wc -c <"$f"; rm -f "$f"',
                 stdin=subprocess.PIPE)
    out, err = proc.communicate(data, timeout=300)
    assert proc.returncode == 0, err
    digest, count = out.decode().split("\n")[:2]
    assert (digest.split()[0], int(count)) == (hashlib.md5(data).hexdigest(), len(data)), out


def check_a_reader_that_stops_early_ends_the_input(env: dict[str, str], vm: str) -> None:
    """`yes | virtpool vm exec VM -- head -c 5`: the command ends, so does virtpool, with the
    command's output and exit code, though its own input never ends."""
    yes = subprocess.Popen(["yes"], stdout=subprocess.PIPE)
    try:
        ran = subprocess.run([VIRTPOOL, "vm", "exec", vm, "--timeout", "120", "--", "head", "-c", "5"], env=env,
                             stdin=yes.stdout, capture_output=True, timeout=180)
    finally:
        yes.kill()
        yes.wait()
    assert (ran.stdout, ran.returncode) == (b"y\ny\ny", 0), ran.stderr
