"""The benchmark's lab fixture: RBD images, their domains, the lab's space and leftovers.

RBD images of controlled size and allocated fraction, the shut-off domains that have them as
their disk, and the lab's space and leftovers.

Why it is apart: every case (backup, restore, verify, serve) starts from the same images, made
the same way (random data written through `rbd import-diff` of a stream generated here, so
exactly the chosen 4 MiB blocks hold data), and removed the same way, also after a killed run.
"""

from __future__ import annotations

import contextlib
import json
import os
import struct
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO

MIB = 1 << 20
GIB = 1 << 30
BLOCK = 4 * MIB
"""RBD object size of the images (and the tool's block size)."""
POOL = "rbd"
DISK_POOL = "rbd-disk"
"""Pool of the lab's BlueStore OSD (`lab.sh disk-osd up`), used by the `--disk` cases."""
DISK_OSD = "osd.1"
MEMSTORE_OSD = "osd.0"
"""The lab's own OSD, which holds pool POOL."""
NAME_PREFIX = "vrb-bench-"
"""Every image, domain and snapshot the benchmark creates starts with this."""
DATA_BUDGET = 3 * GIB
"""Most allocated data alive at once: the lab's memstore OSD holds ~6 GiB in RAM."""
NEARFULL_RATIO = 0.85
"""Ceph's default `mon_osd_nearfull_ratio`: the benchmark never fills the OSD past it."""
REPO_ROOT = Path(__file__).resolve().parent.parent


def log(message: str) -> None:
    """Print a progress line on stderr."""
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


# --------------------------------------------------------------------------------------------
# Environment: the lab, rbd and virsh.


def load_lab_env() -> None:
    """Take the lab's variables (`lab.sh env`) into our environment unless already set."""
    status = subprocess.run(["bash", str(REPO_ROOT / "lab/lab.sh"), "status"], capture_output=True, text=True)
    if status.returncode != 0:
        sys.exit(f"the lab is not up (bash lab/lab.sh up):\n{status.stdout}{status.stderr}")
    out = subprocess.run(
        ["bash", str(REPO_ROOT / "lab/lab.sh"), "env"], capture_output=True, text=True, check=True
    ).stdout
    for line in out.splitlines():
        if line.startswith("export ") and "=" in line:
            key, _, value = line.removeprefix("export ").partition("=")
            os.environ.setdefault(key, value.strip().strip("'\""))


def run(argv: Sequence[str], stdin: bytes | None = None) -> str:
    """Run a set-up command; its failure stops the benchmark with its stderr."""
    proc = subprocess.run(list(argv), input=stdin, capture_output=True)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} failed ({proc.returncode}): {proc.stderr.decode(errors='replace')}")
    return proc.stdout.decode()


def timed(argv: Sequence[str]) -> float:
    """Run a set-up command; its wall seconds."""
    started = time.perf_counter()
    run(argv)
    return time.perf_counter() - started


def virsh(*args: str) -> str:
    """Run virsh against the lab's libvirt."""
    return run(["virsh", "-q", "-c", os.environ["LAB_LIBVIRT_URI"], *args])


def domain_xml(name: str, image: str) -> str:
    """A shut-off domain whose one disk is `image` (POOL/NAME), authenticated as the lab's client."""
    mon_host, _, mon_port = os.environ.get("LAB_MON_HOST", "127.0.0.1:6789").partition(":")
    return (
        f"<domain type='qemu'><name>{name}</name><memory unit='MiB'>64</memory>"
        "<os><type arch='x86_64'>hvm</type></os><devices>"
        "<disk type='network' device='disk'><driver name='qemu' type='raw'/>"
        f"<auth username='{os.environ.get('LAB_CEPH_USER', 'libvirt')}'>"
        f"<secret type='ceph' uuid='{os.environ['LAB_SECRET_UUID']}'/></auth>"
        f"<source protocol='rbd' name='{image}'><host name='{mon_host}' port='{mon_port or 6789}'/></source>"
        "<target dev='vda' bus='virtio'/></disk></devices></domain>"
    )


# --------------------------------------------------------------------------------------------
# Images with controlled content.


def spread(count: int, total: int) -> list[int]:
    """`count` indices out of `range(total)`, evenly spread (the first is 0)."""
    count = min(count, total)
    return [i * total // count for i in range(count)] if count > 0 else []


class DiffStream:
    """Writes an "rbd diff v1" stream (the format `rbd import-diff` reads) to a pipe."""

    def __init__(self, out: IO[bytes], size: int) -> None:
        self._out = out
        out.write(b"rbd diff v1\n")
        out.write(b"s" + struct.pack("<Q", size))

    def write(self, offset: int, data: bytes | memoryview) -> None:
        """A `w` record: `data` at `offset`."""
        self._out.write(b"w" + struct.pack("<QQ", offset, len(data)))
        self._out.write(data)

    def end(self) -> None:
        """The `e` record."""
        self._out.write(b"e")


def write_extents(image: str, size: int, extents: Sequence[tuple[int, int]], salt: int) -> None:
    """Write random, non-zero data into `extents` ((offset, length), ascending) of `image` (POOL/NAME).

    One random 4 MiB pattern is drawn per call; each extent starts with its offset and `salt`, so
    every written block differs from every other and from what was there before.
    """
    pattern = os.urandom(BLOCK)
    with tempfile.TemporaryFile() as err:
        proc = subprocess.Popen(["rbd", "import-diff", "--no-progress", "-", image], stdin=subprocess.PIPE, stderr=err)
        assert proc.stdin is not None
        with contextlib.suppress(BrokenPipeError), proc.stdin:
            stream = DiffStream(proc.stdin, size)
            view = memoryview(pattern)
            for offset, length in extents:
                head = struct.pack("<QQ", offset, salt)
                stream.write(offset, head + view[len(head) : length].tobytes())
            stream.end()
        if proc.wait() != 0:
            err.seek(0)
            raise RuntimeError(f"rbd import-diff into {image} failed: {err.read().decode(errors='replace')}")


@dataclass(frozen=True)
class ImageSpec:
    """An image of the benchmark and the domain that has it as its disk."""

    key: str
    size: int
    allocated_blocks: int
    pool: str = POOL

    @property
    def name(self) -> str:
        """Image and domain name."""
        return NAME_PREFIX + self.key

    @property
    def image(self) -> str:
        """POOL/NAME, as `rbd` takes it."""
        return f"{self.pool}/{self.name}"

    @property
    def osd(self) -> str:
        """The OSD that holds the image (the lab has one per pool)."""
        return DISK_OSD if self.pool == DISK_POOL else MEMSTORE_OSD

    @property
    def allocated(self) -> int:
        """Bytes of allocated data."""
        return self.allocated_blocks * BLOCK

    def blocks(self) -> list[int]:
        """Indices of the allocated 4 MiB blocks."""
        return spread(self.allocated_blocks, self.size // BLOCK)


class Lab:
    """The benchmark's images and domains on the lab; removes all of them on `close`."""

    def __init__(self) -> None:
        self.images: dict[str, ImageSpec] = {}

    def create(self, spec: ImageSpec) -> None:
        """Create the image, fill its allocated blocks, define its domain."""
        ensure_space(spec.allocated, spec.osd)
        log(f"creating {spec.image}: {spec.size // MIB} MiB, {spec.allocated // MIB} MiB allocated")
        run(["rbd", "create", "--size", f"{spec.size // MIB}M", spec.image])
        self.images[spec.key] = spec
        write_extents(spec.image, spec.size, [(b * BLOCK, BLOCK) for b in spec.blocks()], salt=0)
        with tempfile.NamedTemporaryFile("w", suffix=".xml") as xml:
            xml.write(domain_xml(spec.name, spec.image))
            xml.flush()
            virsh("define", xml.name)

    def copy(self, source: ImageSpec, key: str) -> ImageSpec:
        """A copy of `source`'s image with its own domain, removed like the others.

        `rbd cp`: the same bytes, as clones of one golden image hold.
        """
        spec = ImageSpec(key, source.size, source.allocated_blocks, source.pool)
        ensure_space(spec.allocated, spec.osd)
        log(f"copying {source.image} to {spec.image}")
        run(["rbd", "cp", "--no-progress", source.image, spec.image])
        self.images[spec.key] = spec
        with tempfile.NamedTemporaryFile("w", suffix=".xml") as xml:
            xml.write(domain_xml(spec.name, spec.image))
            xml.flush()
            virsh("define", xml.name)
        return spec

    def remove(self, key: str) -> None:
        """Undefine the domain and delete the image with all its snapshots."""
        spec = self.images.pop(key)
        remove_image_and_domain(spec.name, [spec.pool])

    def close(self) -> None:
        """Remove everything still there."""
        for key in list(self.images):
            try:
                self.remove(key)
            except (RuntimeError, OSError) as err:
                log(f"clean-up of {key}: {err}")


def lab_pools() -> list[str]:
    """The pools benchmark images can be in: POOL, and DISK_POOL while the lab has it."""
    return [POOL, *([DISK_POOL] if DISK_POOL in run(["ceph", "osd", "pool", "ls"]).split() else [])]


def remove_image_and_domain(name: str, pools: Sequence[str]) -> None:
    """Undefine domain `name` and delete image `name` with its snapshots from those of `pools` that have it."""
    with contextlib.suppress(RuntimeError):
        virsh("undefine", name)
    for pool in pools:
        with contextlib.suppress(RuntimeError):
            run(["rbd", "snap", "purge", "--no-progress", f"{pool}/{name}"])
        with contextlib.suppress(RuntimeError):
            run(["rbd", "rm", "--no-progress", f"{pool}/{name}"])


def osd_space(osd: str) -> tuple[int, int] | None:
    """Bytes used and total of an OSD of the lab (its admin socket), or None if unknown."""
    try:
        dump = json.loads(run(["ceph", "daemon", osd, "perf", "dump"]))
        return int(dump["osd"]["stat_bytes_used"]), int(dump["osd"]["stat_bytes"])
    except (RuntimeError, OSError, ValueError, KeyError):
        return None


def ensure_space(needed: int, osd: str = MEMSTORE_OSD, patience: float = 180.0) -> None:
    """Wait until `needed` more bytes keep the OSD below its nearfull ratio, or give up.

    The lab's memstore OSD is shared with the test suite; a full OSD blocks every client. Freed
    space comes back with a delay (the OSD trims removed snapshots in the background).
    """
    deadline = time.monotonic() + patience
    while (space := osd_space(osd)) is not None:
        used, total = space
        free = int(total * NEARFULL_RATIO) - used
        if free >= needed:
            return
        if time.monotonic() > deadline:
            raise RuntimeError(
                f"the lab's {osd} has {max(free, 0) // MIB} MiB below its nearfull ratio and the benchmark needs "
                f"{needed // MIB} MiB: free space (old snapshots of lab images) or use --quick"
            )
        log(f"waiting for space on the OSD: {max(free, 0) // MIB} MiB free below nearfull, {needed // MIB} MiB needed")
        time.sleep(10)


def leftovers() -> list[str]:
    """Names of benchmark images and domains left by an earlier run."""
    images = [name for pool in lab_pools() for name in run(["rbd", "ls", pool]).split()]
    domains = virsh("list", "--all", "--name").split()
    return sorted({n for n in images + domains if n.startswith(NAME_PREFIX)})


# --------------------------------------------------------------------------------------------
# Image sizes of a benchmark scale.


@dataclass(frozen=True)
class Scale:
    """Image sizes of one benchmark scale."""

    full: int
    """Fully allocated single image (also the incremental's and one of the four mixed)."""
    mixed: tuple[int, int, int]
    """The other three images of the mixed case (fully allocated)."""
    large: int
    """The single large image."""
    sparse_fraction: float = 0.25
    sparse_factor: int = 16
    change_fraction: float = 0.01
    small_write: int = 64 * 1024
    """Write size of the scattered small-writes incremental (on an image of `full` / 4)."""


SCALES = {
    "default": Scale(full=1 * GIB, mixed=(128 * MIB, 256 * MIB, 512 * MIB), large=2 * GIB),
    "quick": Scale(full=256 * MIB, mixed=(32 * MIB, 64 * MIB, 128 * MIB), large=512 * MIB),
}


DISK_SIZE = 24 * GIB
"""Default image size of the `--disk` cases: a full read from disk lasts long enough (about 40 s on
the lab) that the fixed costs of a run, the monitor's proposal interval above all, stop
dominating, as on a real cluster. Fits a 40 GiB OSD file (lab.sh's default) with both images."""


def blocks_of(size: int) -> int:
    """Number of 4 MiB blocks of an image of `size` bytes."""
    return size // BLOCK


def image_specs(scale: Scale) -> dict[str, ImageSpec]:
    """The benchmark's images at a scale."""
    sparse_blocks = round(blocks_of(scale.full) * scale.sparse_fraction)
    specs = [
        ImageSpec("full", scale.full, blocks_of(scale.full)),
        ImageSpec("sparse", scale.full, sparse_blocks),
        ImageSpec("sparse16", scale.full * scale.sparse_factor, sparse_blocks),
        ImageSpec("large", scale.large, blocks_of(scale.large)),
        ImageSpec("small", scale.full // 4, blocks_of(scale.full // 4)),
    ]
    specs += [ImageSpec(f"mix-{i}", size, blocks_of(size)) for i, size in enumerate(scale.mixed)]
    return {s.key: s for s in specs}


def disk_specs(size: int) -> dict[str, ImageSpec]:
    """The images of the `--disk` cases, in the BlueStore pool."""
    specs = [
        ImageSpec("disk-full", size, blocks_of(size), DISK_POOL),
        ImageSpec("disk-sparse", size, round(blocks_of(size) * Scale.sparse_fraction), DISK_POOL),
    ]
    return {s.key: s for s in specs}
