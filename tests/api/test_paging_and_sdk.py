"""VM list paging, and the SDK: top-level import, typed results, typed exceptions."""

from __future__ import annotations

import pytest

import virtpool
from tests.conftest import Server
from virtpool.model.vm import VMInfo
from virtpool.sdk.errors import error_class


def test_vm_list_pages_carry_total_and_next_link(api_server: Server) -> None:
    api = api_server.api()
    names = [f"page{i}" for i in range(5)]
    for name in names:
        api.create_vm(name)
    response = api._http.get("/vms", params={"limit": 2, "offset": 0})
    assert [v["name"] for v in response.json()] == names[:2]
    assert response.headers["x-total-count"] == "5"
    second = api._http.get(response.links["next"]["url"])  # the next link carries a cursor
    assert "after=" in response.links["next"]["url"]
    assert [v["name"] for v in second.json()] == names[2:4]

    last = api._http.get("/vms", params={"limit": 2, "offset": 4})
    assert [v["name"] for v in last.json()] == names[4:]
    assert 'rel="next"' not in last.headers["link"] and 'rel="prev"' in last.headers["link"]

    page = api.vms_page(limit=3, offset=1)
    assert page.total == 5 and [v.name for v in page.items] == names[1:4]
    rest = api.vms_page(limit=3, after=page.next)
    assert [v.name for v in rest.items] == names[4:] and rest.next is None
    assert [v.name for v in api.vms()] == names
    for name in names:
        api.delete_vm(name)


def test_bad_cursor_is_refused(api_server: Server) -> None:
    response = api_server.api()._http.get("/vms", params={"after": "x/../y:zz"})
    assert response.status_code == 422
    assert response.headers["content-type"] == "application/problem+json"


def test_sdk_from_the_top_level_package(api_server: Server) -> None:
    api = api_server.api()
    with virtpool.Client(api.url, api.token) as client:
        vm = client.create_vm("typed", memory_mib=128)
        assert isinstance(vm, VMInfo)
        assert vm.memory_mib == 128 and vm.state == "stopped"
        with pytest.raises(virtpool.Conflict) as clash:
            client.create_vm("typed")
        assert clash.value.status == 409 and "exists" in clash.value.detail
        assert clash.value.hint == "pick another name"
        with pytest.raises(virtpool.NotFound) as missing:
            client.vm("ghost")
        assert missing.value.title == "not found" and missing.value.hint
        with pytest.raises(virtpool.InvalidRequest):
            client.create_vm("BAD NAME")
        client.delete_vm("typed")
    with virtpool.Client(api.url, "not-a-token") as stranger, pytest.raises(virtpool.Unauthorized):
        stranger.vms()
    with virtpool.Client("http://127.0.0.1:1", "x") as nowhere, pytest.raises(virtpool.Unreachable):
        nowhere.vms()


@pytest.mark.parametrize(("status", "body", "expected"), [
    (409, {"error": "QuotaExceeded"}, virtpool.QuotaExceeded),
    (409, {"type": "https://virtpool.dev/problems/quota-exceeded"}, virtpool.QuotaExceeded),
    (409, {"error": "StateError"}, virtpool.Conflict),
    (413, {}, virtpool.PayloadTooLarge),
    (503, {"error": "NoAgentAttached"}, virtpool.ServerError),
    (418, {}, virtpool.APIError),
])
def test_problems_map_to_exception_classes(status: int, body: dict[str, str],
                                           expected: type[virtpool.APIError]) -> None:
    assert error_class(status, body) is expected
    assert issubclass(virtpool.QuotaExceeded, virtpool.Conflict)


def test_a_vm_read_by_name_has_all_its_ports(api_server: Server) -> None:
    api = api_server.api()
    # Host ports below the kernel's ephemeral range (32768-60999), where the suite's own servers
    # and PostgreSQL take theirs, and above the unprivileged-port floor (1024).
    api.create_vm("ported", ports=["27011:80", "27012:81", "27013:82"])
    assert [str(p) for p in api.vm("ported").ports] == ["27011:80", "27012:81", "27013:82"]
    [listed] = [v for v in api.vms_page(limit=1000).items if v.name == "ported"]
    assert [str(p) for p in listed.ports] == ["27011:80", "27012:81", "27013:82"]
    api.delete_vm("ported")
