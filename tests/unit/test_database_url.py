"""Database URLs given to `virtpool up --db` / `virtpool server --db`: clear errors, no traceback."""

import pytest

from virtpool.control.store.db import DatabaseUnavailable, open_database


@pytest.mark.parametrize("url", ["postgresql://u:p@localhost:notaport/db", "nonsense", "mysql+nodriver://x/y"])
def test_an_unusable_url_is_a_clear_error(url: str) -> None:
    with pytest.raises(DatabaseUnavailable) as caught:
        open_database(url)
    assert caught.value.hint
