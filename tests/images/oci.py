"""Runs a built image the way a container runtime would, without one: the image
is unpacked by umoci, and its entrypoint runs chrooted in the unpacked root, in
its own mount and PID namespaces, as the image's user, with the image's
environment only, on a read-only root with a memory /tmp, /proc and the few
device nodes a runtime provides. Nothing from the host is visible but what a
test binds in (as a pod's volumes would be)."""

from __future__ import annotations

import json
import os
import pathlib
import shlex
import subprocess
from dataclasses import dataclass

# What a runtime mounts into every container (runc's defaults), and nothing more.
_SETUP = r"""
set -eu
root=$1; shift
mount --make-rprivate /
mount --bind "$root" "$root"
mkdir -p "$root/proc" "$root/tmp" "$root/dev" "$root/etc"
while [ "$1" != "--" ]; do
  src=$1 dst=$2 mode=$3; shift 3
  if [ -d "$src" ]; then mkdir -p "$root$dst"; else mkdir -p "$(dirname "$root$dst")"; touch "$root$dst"; fi
  mount --bind "$src" "$root$dst"
  [ "$mode" = ro ] && mount -o remount,bind,ro "$root$dst"
done
shift
mount -o remount,bind,ro "$root"
mount -t proc proc "$root/proc"
mount -t tmpfs -o size=64m,mode=1777 tmpfs "$root/tmp"
mount -t tmpfs -o size=64k,mode=755 tmpfs "$root/dev"
for d in null zero urandom random; do touch "$root/dev/$d"; mount --bind "/dev/$d" "$root/dev/$d"; done
exec "$@"
"""


@dataclass
class Image:
    """An unpacked image: its root filesystem and its configuration."""

    rootfs: pathlib.Path
    config: dict

    @property
    def user(self) -> str:
        u = self.config["process"]["user"]
        return f"{u['uid']}:{u['gid']}"

    @property
    def entrypoint(self) -> list[str]:
        return self.config["process"]["args"]

    @property
    def env(self) -> dict[str, str]:
        return dict(e.split("=", 1) for e in self.config["process"].get("env", []))

    def files(self) -> list[str]:
        """Every path in the image, relative to its root."""
        return sorted(str(p.relative_to(self.rootfs)) for p in self.rootfs.rglob("*") if not p.is_dir())

    def command(self, args: list[str], binds: dict[str, tuple[pathlib.Path, str]] | None = None,
                env: dict[str, str] | None = None) -> list[str]:
        """The argv that runs the entrypoint with `args`; `binds` maps a path in
        the container to (host path, "ro" or "rw")."""
        spec: list[str] = []
        for dst, (src, mode) in (binds or {}).items():
            spec += [str(src), dst, mode]
        environment = [f"{k}={v}" for k, v in {**self.env, **(env or {})}.items()]
        return ["unshare", "--mount", "--pid", "--fork", "--kill-child", "sh", "-c", _SETUP, "setup",
                str(self.rootfs), *spec, "--",
                "/usr/bin/env", "-i", *environment,
                "/usr/sbin/chroot", f"--userspec={self.user}", str(self.rootfs), *self.entrypoint, *args]

    def run(self, args: list[str], **kw) -> subprocess.CompletedProcess:
        out = subprocess.run(self.command(args, **kw), capture_output=True, text=True, timeout=300)
        assert out.returncode == 0, f"{shlex.join(self.entrypoint + args)} in the image: {out.returncode}\n" \
                                    f"{out.stdout[-3000:]}\n{out.stderr[-3000:]}"
        return out


def unpack(archive: pathlib.Path, tag: str, into: pathlib.Path) -> Image:
    """Copies an OCI archive to a layout (skopeo) and unpacks it (umoci)."""
    layout = into / "layout"
    bundle = into / "bundle"
    into.mkdir(parents=True, exist_ok=True)
    subprocess.run(["skopeo", "copy", "-q", f"oci-archive:{archive}:{tag}", f"oci:{layout}:{tag}"], check=True)
    subprocess.run(["umoci", "unpack", "--image", f"{layout}:{tag}", str(bundle)], check=True,
                   capture_output=True)
    return Image(bundle / "rootfs", json.loads((bundle / "config.json").read_text()))


def chown_tree(path: pathlib.Path, user: str) -> None:
    """Gives a host folder to the image's user, as a pod's fsGroup would."""
    uid, gid = (int(x) for x in user.split(":"))
    for p in [path, *path.rglob("*")]:
        os.chown(p, uid, gid)
