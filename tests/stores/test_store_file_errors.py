"""A malformed store file is a StoreConfigError naming the file, never a raw parser error."""

from __future__ import annotations

import pytest

from xtalforge.stores.config import StoreConfigError, build_job_store


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("docs_store: [\n", r"not valid YAML: .*\(line 2, column 1\)"),
        ("- a\n- b\n", r"expected a mapping with 'docs_store'.*got list"),
        ("JOB_STORE: 3\n", r"expected a mapping with 'docs_store'.*got int"),
        ("docs_store: {type: NoSuchStore}\n", r"invalid JobStore spec \(KeyError"),
        ("foo: 1\n", r"expected 'docs_store'"),
    ],
)
def test_malformed_store_file(tmp_path, text, expected):
    path = tmp_path / "store.yaml"
    path.write_text(text)
    with pytest.raises(StoreConfigError, match=expected) as err:
        build_job_store(str(path))
    assert str(path) in str(err.value)
