"""Images: list, show, build (in the background), import (upload), delete.

Every token may read them; only pool admins change them (they are shared by every project)."""

from __future__ import annotations

import errno
from collections.abc import Iterator
from typing import Annotated

from fastapi import APIRouter, File, Form, Response, UploadFile, status
from fastapi.responses import JSONResponse

from virtpool.api.deps import Admin, Caller, PoolDep
from virtpool.api.routes.operations import ACCEPTED, accepted
from virtpool.model.errors import FREE_SPACE_HINT, InsufficientStorage
from virtpool.model.image import BuildStatus, Firmware, ImageInfo
from virtpool.model.spec import MAX_KERNEL_ARGS

router = APIRouter(prefix="/images", tags=["images"])
CHUNK = 1 << 20


@router.get("", response_model=list[ImageInfo])
def list_images(pool: PoolDep, _: Caller) -> list[ImageInfo]:
    return pool.images.list()


@router.get("/{name}", response_model=ImageInfo)
def show_image(name: str, pool: PoolDep, _: Caller) -> ImageInfo:
    return pool.images.get(name)


@router.delete("/{name}", status_code=status.HTTP_204_NO_CONTENT)
def delete_image(name: str, pool: PoolDep, _: Admin) -> Response:
    pool.delete_image(name)
    return Response(status_code=status.HTTP_204_NO_CONTENT)


@router.post("/{name}/build", status_code=status.HTTP_202_ACCEPTED, response_class=JSONResponse,
             responses=ACCEPTED,
             summary="Build the default recipe (Debian kernel, busybox, guest agent) as NAME; "
             "follow the operation")
def build_image(name: str, pool: PoolDep, caller: Admin) -> JSONResponse:
    return accepted(pool.images.start_build(name, actor=caller.name))


@router.get("/{name}/build", response_model=BuildStatus)
def build_status(name: str, pool: PoolDep, _: Caller) -> BuildStatus:
    return pool.images.build_status(name)


@router.post("", response_model=ImageInfo, status_code=status.HTTP_201_CREATED,
             summary="Import a kernel, an optional initramfs and an optional root disk; or a "
             "disk alone that boots through its firmware (BIOS or UEFI) on q35")
def import_image(
    pool: PoolDep,
    _: Admin,
    name: Annotated[str, Form()],
    kernel: Annotated[UploadFile | None, File()] = None,
    initrd: Annotated[UploadFile | None, File()] = None,
    disk: Annotated[UploadFile | None, File()] = None,
    kernel_args: Annotated[str, Form(max_length=MAX_KERNEL_ARGS)] = "",
    firmware: Annotated[Firmware | None, Form()] = None,
) -> ImageInfo:
    files = {field: _chunks(upload) for field, upload in
             (("kernel", kernel), ("initrd", initrd), ("disk", disk)) if upload is not None}
    try:
        return pool.images.import_files(name, files, kernel_args=kernel_args, firmware=firmware)
    except OSError as err:
        raise _no_room(err) from err


def _chunks(upload: UploadFile) -> Iterator[bytes]:
    """The upload as a stream (this handler runs in a worker thread: plain reads are fine)."""
    while chunk := upload.file.read(CHUNK):
        yield chunk


def _no_room(err: OSError) -> Exception:
    """ENOSPC while the upload is received: a 507 that says what to free; anything else as is."""
    if err.errno != errno.ENOSPC:
        return err
    return InsufficientStorage("no space left on the host's data disk for this image upload; "
                               "nothing was kept", hint=FREE_SPACE_HINT)
