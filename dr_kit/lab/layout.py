"""Where the lab keeps everything, and the facts every lab process shares.

A lab directory (default ``.dr-lab``) holds::

    lab.json              endpoints, ports and processes of this lab (mode 0600)
    kubeconfig            contexts ``main`` and ``backup`` with bearer-token users (0600)
    main/api/             main site control-plane state     main/array/   main array
    backup/api/           backup site control-plane state   backup/array/ backup array
    shop.json             the shop application's controls (rate) ...
    shop-status.json      ... and what it reports (committed, latency, errors)
    logs/<process>.log    one log per process
    run/<process>.ready   readiness files
    tokens/main-array.token, tokens/backup-array.token, tokens/link.token
                          the arrays' and the link's API tokens (0600; given to those
                          processes in $DR_KIT_ARRAY_TOKEN / $DR_KIT_LINK_TOKEN)

The lab simulates two sites on one machine; each process in it is a real process with
real files and sockets on 127.0.0.1.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dr_kit.errors import NotFound

SITES = ("main", "backup")
STORAGE_CLASS = "lab-array"
CSI_DRIVER = "lab.dr-kit.io"  # the provisioner / CSI driver name of the lab array
SNAPSHOT_CLASS = "lab-array-group"  # VolumeGroupSnapshotClass at the backup site
VOLUME_SNAPSHOT_CLASS = "lab-array-snap"
SHOP_NAMESPACE = "shop"
SHOP_PVCS = {"sales-db": "sales.db", "stock-db": "stock.db"}
SHOP_PVC_SIZE = "64Mi"
DEFAULT_DIR = ".dr-lab"
ANNOTATION_PREFIX = "lab.dr-kit.io/"  # the lab's own bookkeeping (what it publishes: dr_kit.published)
PLUGIN_NAMESPACE = "lab-storage"  # the storage plug-ins' own namespace at each site
ARRAY_SECRET = "array-credentials"  # there: the array's management endpoint


@dataclass(frozen=True)
class LabDir:
    root: Path

    @classmethod
    def of(cls, path: str | os.PathLike[str] | None) -> LabDir:
        return cls(Path(path or DEFAULT_DIR).resolve())

    # -- paths ----------------------------------------------------------------------
    @property
    def state_file(self) -> Path:
        return self.root / "lab.json"

    @property
    def kubeconfig(self) -> Path:
        return self.root / "kubeconfig"

    def api_dir(self, site: str) -> Path:
        return self.root / site / "api"

    def array_dir(self, site: str) -> Path:
        return self.root / site / "array"

    @property
    def logs(self) -> Path:
        return self.root / "logs"

    @property
    def run(self) -> Path:
        return self.root / "run"

    @property
    def shop_control(self) -> Path:
        return self.root / "shop.json"

    @property
    def shop_status(self) -> Path:
        return self.root / "shop-status.json"

    @property
    def tokens(self) -> Path:
        return self.root / "tokens"

    def token_file(self, process: str) -> Path:
        """Where the API token of ``main-array``, ``backup-array`` or ``link`` is kept (0600)."""
        return self.tokens / f"{process}.token"

    def token(self, process: str) -> str | None:
        try:
            return self.token_file(process).read_text().strip() or None
        except OSError:
            return None

    def array_token(self, site: str) -> str | None:
        """The token of a site's array management API (None when the lab has none yet)."""
        return self.token(f"{site}-array")

    def ready_file(self, process: str) -> Path:
        return self.run / f"{process}.ready"

    def log_file(self, process: str) -> Path:
        return self.logs / f"{process}.log"

    # -- state ----------------------------------------------------------------------
    def exists(self) -> bool:
        return self.state_file.exists()

    def load(self) -> dict[str, Any]:
        if not self.state_file.exists():
            raise NotFound(f"no lab in {self.root}; start one with: dr-kit lab up --dir {self.root}")
        return json.loads(self.state_file.read_text())

    def save(self, state: dict[str, Any]) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        tmp = self.state_file.with_suffix(".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            json.dump(state, f, indent=1, sort_keys=True)
        os.replace(tmp, self.state_file)

    # -- endpoints (from lab.json) --------------------------------------------------
    def array_endpoint(self, site: str, state: dict[str, Any] | None = None) -> dict[str, str]:
        """``{"mgmt_url", "data_socket", "replication"}`` of a site's array."""
        st = state or self.load()
        ep = st["endpoints"][site]["array"]
        return dict(ep)

    def link_address(self, state: dict[str, Any] | None = None) -> str:
        st = state or self.load()
        return st["endpoints"]["link"]["listen"]
