"""The VM spec a user writes, and sizes as people write them."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from virtpool.model.errors import InvalidRequest
from virtpool.model.spec import (
    MAX_CPUS,
    MAX_KERNEL_ARGS,
    MIN_MEMORY_MIB,
    PortForward,
    VMSpec,
    valid_name,
)
from virtpool.model.units import format_mib, parse_size_mib


class TestNames:
    @pytest.mark.parametrize("name", ["a", "web1", "db-2", "x" * 63, "a-b-c", "a1-"])
    def test_valid(self, name: str) -> None:
        assert valid_name(name)
        assert VMSpec(name=name).name == name

    @pytest.mark.parametrize(
        "name",
        [
            "",
            "Web1",  # uppercase
            "WEB",
            "1web",  # starts with a digit
            "-web",
            "x" * 64,  # too long
            "web_1",
            "web.1",
            "../etc",
            "a/b",  # path separators
            "a\\b",
            "web;rm -rf /",  # shell metacharacters
            "web$(id)",
            "web`id`",
            "web|x",
            "web&",
            "web 1",
            "web,1",  # would break QEMU's key=value options
            "wéb",
            "web\nfoo",
            "\nweb",
        ],
    )
    def test_invalid(self, name: str) -> None:
        assert not valid_name(name)
        with pytest.raises(ValidationError):
            VMSpec(name=name)

    def test_error_states_the_rule(self) -> None:
        with pytest.raises(ValidationError) as caught:
            VMSpec(name="Bad Name")
        text = str(caught.value)
        assert "Bad Name" in text
        assert "lowercase" in text

    def test_image_name_follows_same_rules(self) -> None:
        assert VMSpec(name="web1", image="debian-12").image == "debian-12"
        for bad in ("../default", "Default", "a/b", "", "x" * 64):
            with pytest.raises(ValidationError):
                VMSpec(name="web1", image=bad)

    def test_valid_name_refuses_trailing_newline(self) -> None:
        assert not valid_name("web1\n")

    @pytest.mark.parametrize("field", ["name", "image"])
    def test_trailing_newline_refused(self, field: str) -> None:
        # `$` in the pattern also matches before a final "\n": "web1\n" must still be refused,
        # or the newline reaches QEMU's -name and the kernel command line.
        fields = {"name": "web1", "image": "default", field: "web1\n"}
        with pytest.raises(ValidationError):
            VMSpec(**fields)


class TestBounds:
    def test_defaults(self) -> None:
        spec = VMSpec(name="web1")
        assert spec.image == "default"
        assert spec.cpus == 1
        assert spec.memory_mib == 256
        assert spec.disk_mib == 1024
        assert spec.ports == []
        assert spec.kernel_args == ""
        assert spec.accel == "auto"

    @pytest.mark.parametrize("cpus", [1, 2, MAX_CPUS])
    def test_cpus_ok(self, cpus: int) -> None:
        assert VMSpec(name="a", cpus=cpus).cpus == cpus

    @pytest.mark.parametrize("cpus", [0, -1, MAX_CPUS + 1])
    def test_cpus_out_of_range(self, cpus: int) -> None:
        with pytest.raises(ValidationError):
            VMSpec(name="a", cpus=cpus)

    def test_memory_bounds(self) -> None:
        assert VMSpec(name="a", memory_mib=MIN_MEMORY_MIB).memory_mib == MIN_MEMORY_MIB
        assert (
            VMSpec(name="a", memory_mib=16 * 1024 * 1024).memory_mib == 16 * 1024 * 1024
        )
        for bad in (0, MIN_MEMORY_MIB - 1, 16 * 1024 * 1024 + 1):
            with pytest.raises(ValidationError):
                VMSpec(name="a", memory_mib=bad)

    def test_disk_bounds(self) -> None:
        assert VMSpec(name="a", disk_mib=1).disk_mib == 1
        assert VMSpec(name="a", disk_mib=64 * 1024 * 1024).disk_mib == 64 * 1024 * 1024
        for bad in (0, -1024, 64 * 1024 * 1024 + 1):
            with pytest.raises(ValidationError):
                VMSpec(name="a", disk_mib=bad)

    def test_accel_choices(self) -> None:
        for accel in ("auto", "kvm", "tcg"):
            assert VMSpec(name="a", accel=accel).accel == accel
        with pytest.raises(ValidationError):
            VMSpec(name="a", accel="hvf")

    def test_unknown_fields_refused(self) -> None:
        with pytest.raises(ValidationError) as caught:
            VMSpec(name="a", memory="1G")
        assert "memory" in str(caught.value)

    def test_unknown_port_field_refused(self) -> None:
        with pytest.raises(ValidationError):
            PortForward(host=1, guest=2, bind="0.0.0.0")


class TestPorts:
    def test_ports_accepted(self) -> None:
        spec = VMSpec(
            name="a", ports=[{"host": 8080, "guest": 80}, PortForward.parse("2222:22")]
        )
        assert [str(p) for p in spec.ports] == ["8080:80", "2222:22"]

    def test_duplicate_host_port_refused(self) -> None:
        with pytest.raises(ValidationError) as caught:
            VMSpec(
                name="a",
                ports=[
                    PortForward(host=8080, guest=80),
                    PortForward(host=8080, guest=81),
                ],
            )
        assert "8080" in str(caught.value)

    def test_same_guest_port_twice_is_fine(self) -> None:
        spec = VMSpec(
            name="a",
            ports=[PortForward(host=8080, guest=80), PortForward(host=8081, guest=80)],
        )
        assert len(spec.ports) == 2

    def test_too_many_ports(self) -> None:
        with pytest.raises(ValidationError):
            VMSpec(
                name="a",
                ports=[PortForward(host=1000 + i, guest=80) for i in range(65)],
            )

    @pytest.mark.parametrize(
        ("host", "guest"), [(0, 80), (80, 0), (65536, 80), (80, 65536)]
    )
    def test_port_range(self, host: int, guest: int) -> None:
        with pytest.raises(ValidationError):
            PortForward(host=host, guest=guest)

    def test_frozen(self) -> None:
        forward = PortForward(host=1, guest=2)
        with pytest.raises(ValidationError):
            forward.host = 3  # type: ignore[misc]


class TestPortForwardParse:
    @pytest.mark.parametrize(
        ("text", "host", "guest"),
        [("8080:80", 8080, 80), ("1:65535", 1, 65535), ("65535:1", 65535, 1)],
    )
    def test_good(self, text: str, host: int, guest: int) -> None:
        forward = PortForward.parse(text)
        assert (forward.host, forward.guest) == (host, guest)
        assert str(forward) == text

    @pytest.mark.parametrize(
        "text",
        [
            "",
            "8080",
            "8080:",
            ":80",
            "a:b",
            "8080:80:1",
            "-1:80",
            "80:-1",
            "8080 :80",
            "0x50:80",
            "127.0.0.1:8080:80",
            "8080/tcp:80",
        ],
    )
    def test_bad_raises_invalid_request(self, text: str) -> None:
        with pytest.raises(InvalidRequest) as caught:
            PortForward.parse(text)
        assert caught.value.hint is not None
        assert "HOST:GUEST" in caught.value.hint

    @pytest.mark.parametrize("text", ["0:80", "80:70000", "99999:1"])
    def test_out_of_range_refused(self, text: str) -> None:
        with pytest.raises((InvalidRequest, ValidationError)):
            PortForward.parse(text)


class TestKernelArgs:
    def test_ordinary_args(self) -> None:
        spec = VMSpec(name="a", kernel_args='quiet console=ttyS0,115200 foo="a b"')
        assert spec.kernel_args.startswith("quiet")

    @pytest.mark.parametrize(
        "bad", ["a\nb", "a\rb", "a\tb", "a\x00b", "a\x1bb", "a\x7fb", "\n"]
    )
    def test_control_characters_refused(self, bad: str) -> None:
        with pytest.raises(ValidationError) as caught:
            VMSpec(name="a", kernel_args=bad)
        assert "one line" in str(caught.value)

    def test_length_limit(self) -> None:
        assert (
            len(VMSpec(name="a", kernel_args="x" * MAX_KERNEL_ARGS).kernel_args)
            == MAX_KERNEL_ARGS
        )
        with pytest.raises(ValidationError):
            VMSpec(name="a", kernel_args="x" * (MAX_KERNEL_ARGS + 1))


class TestParseSize:
    @pytest.mark.parametrize(
        ("text", "mib"),
        [
            ("256M", 256),
            ("256m", 256),
            ("256MiB", 256),
            ("256MB", 256),
            ("1G", 1024),
            ("1GiB", 1024),
            ("1.5G", 1536),
            ("2g", 2048),
            ("512", 512),
            (" 512 ", 512),
            ("1T", 1024 * 1024),
            ("1024K", 1),
            ("0.5G", 512),
            (64, 64),
        ],
    )
    def test_good(self, text: str | int, mib: int) -> None:
        assert parse_size_mib(text) == mib

    @pytest.mark.parametrize(
        "text",
        [
            "",
            "abc",
            "1X",
            "G",
            "1 G B",
            "-1G",
            "1,5G",
            "1e3",
            "1GG",
            "1.G",
            ".5G",
            "0x10",
        ],
    )
    def test_bad(self, text: str) -> None:
        with pytest.raises(InvalidRequest) as caught:
            parse_size_mib(text, what="memory")
        assert "memory" in caught.value.message
        assert caught.value.hint is not None

    @pytest.mark.parametrize("text", ["512B", "2iB"])
    def test_bytes_suffix_is_not_mib(self, text: str) -> None:
        # "512B" is 512 bytes to anyone reading it; taking it as 512 MiB is a 2**20 error.
        with pytest.raises(InvalidRequest):
            parse_size_mib(text)

    @pytest.mark.parametrize("text", ["1.5M", "1K", "0.1G", "100K", "1.1G"])
    def test_fractional_mib_refused(self, text: str) -> None:
        with pytest.raises(InvalidRequest) as caught:
            parse_size_mib(text)
        assert "whole number of MiB" in caught.value.message

    def test_roundtrip_with_format(self) -> None:
        for mib in (1, 64, 256, 1000, 1024, 1536, 2048, 1024 * 1024, 3 * 1024 * 1024):
            assert parse_size_mib(format_mib(mib)) == mib


class TestFormatMib:
    @pytest.mark.parametrize(
        ("mib", "text"),
        [
            (0, "0M"),
            (1, "1M"),
            (256, "256M"),
            (1024, "1G"),
            (1536, "1536M"),
            (4096, "4G"),
            (1024 * 1024, "1T"),
            (1024 * 1024 + 1024, "1025G"),
        ],
    )
    def test_shortest_exact_form(self, mib: int, text: str) -> None:
        assert format_mib(mib) == text
