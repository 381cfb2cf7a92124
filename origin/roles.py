"""The origin's registration with the kernel: the ``origin`` role (uploads now; the catalogue,
the pipeline and the CDN's origin next) from ``[origin]``, the ``transcoder`` role from
``[transcoder]``, and ``headwater token``.

The origin starts after the object store (order 55: its uploads go to the S3 gateway) and before
the edge, whose shield fetches from it. The transcoder starts after the licence server (order
75): it makes titles' keys in the licence node's key store, whose KEK the licence server makes.
"""

from __future__ import annotations

from typing import Any, Mapping

from headwater.config import ClusterConfig, Reader
from headwater.roles import Role, RoleSet

from . import config, status
from .transcode import config as transcode_config


def _endpoints(cfg: ClusterConfig) -> list[str]:
    node = cfg.origin
    if node is None:
        return []
    return [f"origin  {h.id:<6} {h.base_url}/uploads  (tus; tokens: headwater token --client ID --scope upload)"
            for h in node.hosts or (node,)]


def _check(r: Reader, cfg: ClusterConfig, env: Mapping[str, str]) -> None:
    """The transcoder shares the origin's catalogue and store, and (unless it packages in the
    clear) the licence node's key store."""
    node: Any = cfg.transcoder
    if node is None:
        return
    if cfg.origin is None:
        raise r.error("transcoder", "needs the [origin] section: it leases the origin's jobs from its catalogue")
    if node.scheme != "none" and cfg.licence is None:
        raise r.error("transcoder.scheme", f"{node.scheme} needs a [licence] section on this host: "
                                           "content keys are made in its key store")


def _commands(sub: object, config_help: str) -> None:
    from .commands import add_commands

    add_commands(sub, config_help)


ROLE_SET = RoleSet(
    name="origin",
    roles=(
        Role(name="origin", section="origin", order=55, read=config.read_origin,
             entry="headwater.origin.daemon:run_origin", details_text=status.origin_text),
        Role(name="transcoder", section="transcoder", order=75, workers=True, read=transcode_config.read_transcoder,
             entry="headwater.origin.transcode.daemon:run_transcoder", details_text=status.transcoder_text),
    ),
    check=_check,
    endpoints=_endpoints,
    commands=_commands,
)
