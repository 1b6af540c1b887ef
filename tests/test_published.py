"""What drivers publish, without a cluster: Secret values, database names, array URLs."""

from __future__ import annotations

import pytest
from sqlalchemy.engine import make_url

from dr_kit import published
from dr_kit.errors import InvalidInput
from dr_kit.sqlite import dialect


def test_secret_values() -> None:
    secret = {"data": published.encode({"stock-url": "drkit+array://b/v/stock.db?socket=/s"}),
              "stringData": {"password": "pw"}}
    assert published.secret_text(secret, "stock-url") == "drkit+array://b/v/stock.db?socket=/s"
    assert published.secret_text(secret, "password") == "pw"
    assert published.secret_text(secret, "sales-url") is None
    assert published.secret_text({"data": {"k": "not base64!"}}, "k") is None
    assert published.databases_secret("analytics-1") == "analytics-1-databases"


def test_array_volume_urls_round_trip() -> None:
    url = dialect.url_for("backup", "pvc-1234", "stock.db", "/tmp/lab dir/data.sock")
    assert url.startswith("drkit+array://backup/pvc-1234/stock.db?socket=")
    assert dialect.parse(make_url(url)) == ("/tmp/lab dir/data.sock", "pvc-1234", "stock.db")
    for bad in ("drkit+array://backup/pvc-1234/stock.db",  # no data path
                "drkit+array://backup/stock.db?socket=/s",  # no volume
                "drkit+array://backup/v/a/b.db?socket=/s",  # a file in a folder
                "drkit+array://backup/v/f.db?socket=relative"):
        with pytest.raises(InvalidInput, match="bad database URL"):
            dialect.engine(bad)
    with pytest.raises(InvalidInput, match="not a drkit"):
        dialect.engine("sqlite:///x.db")


def test_the_scheme_is_known_to_sqlalchemy() -> None:
    from sqlalchemy.dialects import registry

    assert registry.load("drkit.array") is dialect.ArrayVolumeDialect
