"""What a user writes inside the default guest stays on its disk, across stops and starts."""

from __future__ import annotations

from tests.conftest import Server


def test_a_file_written_before_a_stop_is_there_after_the_start(server: Server) -> None:
    created = server.cli("vm", "create", "keep", "--disk", "1G", "--start", "--wait")
    assert created.returncode == 0, created.stderr
    wrote = server.cli("vm", "exec", "keep", "--", "sh", "-c", "echo persist > /root/marker && sync")
    assert wrote.returncode == 0, wrote.stderr
    # The root is the disk: an overlay whose writable layer is the ext4 on /dev/vda.
    mounts = server.cli("vm", "exec", "keep", "--", "cat", "/proc/mounts").stdout
    assert "/dev/vda /.disk ext4" in mounts and "overlay / overlay" in mounts

    assert server.cli("vm", "stop", "keep").returncode == 0
    assert server.cli("vm", "start", "keep").returncode == 0
    read = server.cli("vm", "exec", "keep", "--", "cat", "/root/marker")
    assert read.returncode == 0, read.stderr
    assert read.stdout == "persist\n"

    # A disk grown while stopped is put to use by the root filesystem at the next boot.
    before = _root_kib(server, "keep")
    assert server.cli("vm", "stop", "keep").returncode == 0
    assert server.cli("vm", "resize", "keep", "--disk-size", "2G").returncode == 0
    assert server.cli("vm", "start", "keep").returncode == 0
    assert _root_kib(server, "keep") > before + 900 * 1024
    assert server.cli("vm", "exec", "keep", "--", "cat", "/root/marker").stdout == "persist\n"
    assert server.cli("vm", "delete", "keep", "--force").returncode == 0


def test_wget_fetches_a_page_by_name(server: Server) -> None:
    server.api().create_vm("fetch", start=True)
    assert server.api().wait_vm("fetch").state == "running"
    fetched = server.cli("vm", "exec", "fetch", "--", "sh", "-c",
                         "mkdir -p /srv && echo hello > /srv/index.html && "
                         "httpd -p 127.0.0.1:8080 -h /srv && wget -q -O - http://localhost:8080/")
    assert fetched.returncode == 0, fetched.stderr
    assert fetched.stdout == "hello\n"
    server.api().delete_vm("fetch", force=True)


def _root_kib(server: Server, name: str) -> int:
    df = server.cli("vm", "exec", name, "--", "df", "-k", "/")
    assert df.returncode == 0, df.stderr
    return int(df.stdout.splitlines()[1].split()[1])
