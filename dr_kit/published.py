"""What dr_kit reads from a cluster beyond the standard resources, and who publishes it.

dr_kit works from what a cluster serves: PVCs, PVs, StorageClasses, the replication
resources (csi-addons VolumeGroupReplication, Hitachi Replication) and the snapshot
resources (VolumeGroupSnapshot and friends).  A storage driver may publish a few more
facts, under the keys below; the lab's storage plug-ins publish all of them, a vendor
driver usually none, and dr_kit then says what it cannot know (a lag read from
``lastSyncTime`` is an upper bound, a snapshot's consistency point is unknown, ...).

**Array access** (the driver's own Secret, named by its StorageClass, as CSI drivers do)::

    StorageClass parameters  csi.storage.k8s.io/provisioner-secret-name
                             csi.storage.k8s.io/provisioner-secret-namespace
    Secret keys              management-url   the array's management API (dr_kit's array API)
                             token            its bearer token (optional)

With it, lag comes from the array's own report (exact: sequence, bytes, time) instead of
the replication status.

**Annotations** a driver sets::

    on a replication resource     storage.dr-kit.io/array-group   the array's consistency group
    on a VolumeGroupSnapshot      storage.dr-kit.io/sequence, position, consistency-time
                                  (unix seconds of the last write in the image),
                                  lag-seconds (time lag when it was taken), consistent,
                                  volumes (source PVCs), array-snapshot
    label on a backup-site copy   storage.dr-kit.io/replicated-from   (PVC and PV)

**Databases of a restored snapshot group** (what a DBA publishes once the restored volumes
are attached to database instances; the lab's plug-in plays that part for the shop): a
Secret ``<snapshot group>-databases`` in the namespace at the backup site with keys
``stock-url`` and ``sales-url`` (SQLAlchemy URLs, ``{snapshot}`` and ``{namespace}`` are
filled in) and optionally ``password``.
"""

from __future__ import annotations

import base64
from typing import Any

PREFIX = "storage.dr-kit.io/"

# array access
SECRET_NAME_PARAM = "csi.storage.k8s.io/provisioner-secret-name"
SECRET_NAMESPACE_PARAM = "csi.storage.k8s.io/provisioner-secret-namespace"
MANAGEMENT_URL_KEY = "management-url"
TOKEN_KEY = "token"

# annotations and labels
ARRAY_GROUP = PREFIX + "array-group"
REPLICATED_FROM = PREFIX + "replicated-from"
SNAPSHOT_SEQUENCE = PREFIX + "sequence"
SNAPSHOT_POSITION = PREFIX + "position"
SNAPSHOT_TIME = PREFIX + "consistency-time"
SNAPSHOT_LAG = PREFIX + "lag-seconds"
SNAPSHOT_CONSISTENT = PREFIX + "consistent"
SNAPSHOT_VOLUMES = PREFIX + "volumes"
SNAPSHOT_ARRAY_SNAPSHOT = PREFIX + "array-snapshot"

# databases of a restored snapshot group
DATABASES_SECRET_SUFFIX = "-databases"
STOCK_URL_KEY = "stock-url"
SALES_URL_KEY = "sales-url"
PASSWORD_KEY = "password"


def databases_secret(snapshot_group: str) -> str:
    """The name of the Secret holding a restored snapshot group's database URLs."""
    return f"{snapshot_group}{DATABASES_SECRET_SUFFIX}"[:253]


def secret_text(secret: dict[str, Any], key: str) -> str | None:
    """A Secret's value as text (``data`` is base64, ``stringData`` plain); None when absent
    or not text."""
    plain = (secret.get("stringData") or {}).get(key)
    if plain:
        return str(plain)
    raw = (secret.get("data") or {}).get(key)
    if not raw:
        return None
    try:
        return base64.b64decode(raw, validate=True).decode()
    except (ValueError, UnicodeDecodeError):
        return None


def encode(values: dict[str, str]) -> dict[str, str]:
    """Secret ``data`` for text values."""
    return {k: base64.b64encode(v.encode()).decode() for k, v in values.items()}


__all__ = [name for name in dir() if name.isupper()] + ["databases_secret", "encode",
                                                        "secret_text"]
