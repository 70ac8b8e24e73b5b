#!/usr/bin/env python3
"""Write a one-layer image (docker-archive) holding static binaries, with no registry and no
Docker: `ctr images import` takes it. The local cluster runs Jaeger, CoreDNS, the NetworkPolicy
enforcer and the pod sandbox this way, each built from its Go module or C source here."""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import tarfile
from pathlib import Path

# nobody:nogroup, the user images of single static binaries conventionally run as.
NOBODY = 65534


def layer_tar(files: list[tuple[Path, str]]) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as layer:
        for directory in ("tmp", "etc"):
            info = tarfile.TarInfo(directory)
            info.type, info.mode = tarfile.DIRTYPE, 0o1777 if directory == "tmp" else 0o755
            layer.addfile(info)
        passwd = b"root:x:0:0:root:/:/sbin/nologin\nnobody:x:65534:65534:nobody:/:/sbin/nologin\n"
        info = tarfile.TarInfo("etc/passwd")
        info.size, info.mode = len(passwd), 0o644
        layer.addfile(info, io.BytesIO(passwd))
        for source, target in files:
            info = layer.gettarinfo(str(source), arcname=target.lstrip("/"))
            info.uid = info.gid = 0
            info.uname = info.gname = "root"
            info.mode = 0o755
            with source.open("rb") as data:
                layer.addfile(info, data)
    return buffer.getvalue()


def image_archive(reference: str, entrypoint: list[str], files: list[tuple[Path, str]],
                  user: int) -> bytes:
    layer = layer_tar(files)
    config = json.dumps({
        "architecture": "amd64",
        "os": "linux",
        "config": {"Entrypoint": entrypoint, "User": str(user), "WorkingDir": "/"},
        "rootfs": {"type": "layers", "diff_ids": ["sha256:" + hashlib.sha256(layer).hexdigest()]},
    }).encode()
    config_name = hashlib.sha256(config).hexdigest() + ".json"
    manifest = json.dumps([{"Config": config_name, "RepoTags": [reference],
                            "Layers": ["layer.tar"]}]).encode()
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as archive:
        members = (("layer.tar", layer), (config_name, config), ("manifest.json", manifest))
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size, info.mode = len(data), 0o644
            archive.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("reference",
                        help="image name and tag, e.g. localhost/tlsstorm/jaeger:2.11.0")
    parser.add_argument("--file", action="append", required=True, metavar="SOURCE:TARGET",
                        help="a file to put in the image at TARGET (repeatable)")
    parser.add_argument("--entrypoint", required=True, help="the command, space-separated")
    parser.add_argument("--user", type=int, default=NOBODY)
    parser.add_argument("-o", "--output", type=Path, required=True)
    args = parser.parse_args()
    files = [(Path(source), target) for source, _, target in (f.partition(":") for f in args.file)]
    for source, target in files:
        if not source.is_file() or not target.startswith("/"):
            parser.error(f"--file {source}:{target}: needs an existing file and an absolute target")
    archive = image_archive(args.reference, args.entrypoint.split(), files, args.user)
    args.output.write_bytes(archive)


if __name__ == "__main__":
    main()
