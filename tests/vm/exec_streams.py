"""What `virtpool vm exec` streams, checked through the real CLI: one set of checks for a VM on
the server's own host (test_cli_vm.py) and one on a remote agent's (test_remote_vm.py).

Execs on one VM run alongside each other (they share its guest agent request by request), so a
check may signal a running command through a second exec.
"""

from __future__ import annotations

import hashlib
import os
import secrets
import select
import subprocess

from tests.conftest import VIRTPOOL

LINE_WAIT_S = 120.0  # for a line the guest writes at once (a loaded machine is slow)


def line(proc: subprocess.Popen[bytes], timeout: float = LINE_WAIT_S) -> bytes:
    """The next line of the command's stdout, failing after ``timeout`` seconds."""
    assert proc.stdout is not None
    ready, _, _ = select.select([proc.stdout], [], [], timeout)
    assert ready, f"no output within {timeout:g}s"
    return proc.stdout.readline()


def _exec(env: dict[str, str], vm: str, script: str, *args: str, timeout: int = 120,
          **kwargs: object) -> subprocess.Popen[bytes]:
    return subprocess.Popen([VIRTPOOL, "vm", "exec", vm, "--timeout", str(timeout), "--", "sh", "-c", script, *args],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, **kwargs)  # type: ignore[call-overload]


def _run(env: dict[str, str], vm: str, *argv: str) -> subprocess.CompletedProcess[str]:
    """One `virtpool vm exec` to its end (bounded, so that one held back fails, not hangs)."""
    return subprocess.run([VIRTPOOL, "vm", "exec", vm, *argv], env=env, stdin=subprocess.DEVNULL,
                          capture_output=True, text=True, timeout=LINE_WAIT_S)


def check_quick_execs_run_while_a_long_one_does(env: dict[str, str], vm: str) -> None:
    """A long command waits for a file that only a second exec makes: an echo, a command
    killed at its timeout (exit 5) and a `ps` all end while the long one still runs (it is
    listed in the guest), then the file ends it with its own output and exit code."""
    go = f"/tmp/go-{secrets.token_hex(4)}"
    long = _exec(env, vm, f'echo started; while [ ! -e {go} ]; do sleep 1; done; echo "long done"; exit 7',
                 timeout=600, stdin=subprocess.DEVNULL)
    try:
        assert line(long) == b"started\n"
        quick = _run(env, vm, "--", "echo", "quick")
        assert (quick.stdout, quick.returncode) == ("quick\n", 0), quick.stderr
        timed_out = _run(env, vm, "--timeout", "2", "--", "sleep", "57")
        assert timed_out.returncode == 5 and "still running after 2s" in timed_out.stderr, timed_out.stderr
        listed = _run(env, vm, "--", "ps")
        assert listed.returncode == 0, listed.stderr
        assert go in listed.stdout and "sleep 57" not in listed.stdout, listed.stdout
        assert long.poll() is None  # nothing ends it but the file
        touched = _run(env, vm, "--", "touch", go)
        assert touched.returncode == 0, touched.stderr
        out, err = long.communicate(timeout=LINE_WAIT_S)
    finally:
        if long.poll() is None:
            long.kill()
    assert (out, err, long.returncode) == (b"long done\n", b"", 7)
    _run(env, vm, "--", "rm", "-f", go)


def check_concurrent_streams_keep_their_own_input_and_output(env: dict[str, str], vm: str) -> None:
    """Three execs read their piped input line by line at once: each line comes back from its
    own command only, round after round while all three run, and each ends with its own
    stderr and exit code once its input closes."""
    tags = [f"s{i}-{secrets.token_hex(3)}" for i in range(3)]
    script = 'while read -r line; do echo "$0 got $line"; done; echo "$0 end" >&2; exit $1'
    procs = [_exec(env, vm, script, tag, str(10 + i), timeout=600, stdin=subprocess.PIPE)
             for i, tag in enumerate(tags)]
    try:
        for round_ in range(3):
            for tag, proc in zip(tags, procs):
                assert proc.stdin is not None
                proc.stdin.write(f"{tag}-{round_}\n".encode())
                proc.stdin.flush()
            for tag, proc in zip(tags, procs):
                assert line(proc) == f"{tag} got {tag}-{round_}\n".encode()
            assert [proc.poll() for proc in procs] == [None, None, None]  # all three still run
        for proc in procs:
            assert proc.stdin is not None
            proc.stdin.close()
            proc.stdin = None  # closed: communicate() only reads what is left
        ended = [proc.communicate(timeout=LINE_WAIT_S) for proc in procs]
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
    assert [(out, err, proc.returncode) for (out, err), proc in zip(ended, procs)] == [
        (b"", f"{tag} end\n".encode(), 10 + i) for i, tag in enumerate(tags)]


def check_output_streams_back(env: dict[str, str], vm: str) -> None:
    """stdout and stderr come while the command runs: without streaming both lines would come
    together at the end; streamed, the second is still 8 s away when the first has been read."""
    proc = _exec(env, vm, "echo first; echo to-stderr >&2; sleep 8; echo second; exit 4",
                 stdin=subprocess.DEVNULL)
    try:
        assert line(proc) == b"first\n"
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
            assert line(proc) == b"got " + word + b"\n"
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
