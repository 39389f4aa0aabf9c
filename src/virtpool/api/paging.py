"""Paging headers: the total behind a page, and links to the next and previous pages."""

from __future__ import annotations

from fastapi import Request

# Ids and offsets are 32-bit integer columns on PostgreSQL; larger numbers cannot match anything
# and would overflow the database's integers.
MAX_ID = 2**31 - 1


def page_headers(request: Request, total: int, limit: int, offset: int,
                 next_cursor: str | None) -> dict[str, str]:
    """``X-Total-Count`` and an RFC 8288 ``Link`` header: rel next (by cursor, when the page was
    full) and rel prev (by offset, for a page read by offset)."""
    links = []
    if next_cursor is not None:
        following = request.url.remove_query_params("offset").include_query_params(after=next_cursor, limit=limit)
        links.append(f'<{following}>; rel="next"')
    if offset > 0:
        links.append(f'<{request.url.include_query_params(offset=max(0, offset - limit), limit=limit)}>; '
                     'rel="prev"')
    headers = {"X-Total-Count": str(total)}
    if links:
        headers["Link"] = ", ".join(links)
    return headers
