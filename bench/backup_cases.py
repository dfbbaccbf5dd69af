"""The backup cases, and the order in which all cases run (`Bench`), sharing images.

Our full, incremental, multi-image and compressed backups against `rbd export` and `rbd
export-diff` of the same snapshots (module doc of run.py).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from lab_images import (
    BLOCK,
    DATA_BUDGET,
    MIB,
    NAME_PREFIX,
    POOL,
    ImageSpec,
    Lab,
    Scale,
    disk_specs,
    ensure_space,
    image_specs,
    log,
    timed,
    write_extents,
)
from measure import CaseResult, Runner
from objstore_cases import ObjectStoreCases
from report import summary_line
from restore_cases import RestoreCases


class Bench:
    """The cases, in order, sharing images; an image is deleted after its last case."""

    def __init__(self, lab: Lab, runner: Runner, scale: Scale, repeat: int, disk_size: int | None = None) -> None:
        self.lab = lab
        self.runner = runner
        self.scale = scale
        self.repeat = repeat
        self.disk = disk_size is not None
        self.specs = disk_specs(disk_size) if disk_size is not None else image_specs(scale)
        self.results: list[CaseResult] = []
        self.restore = RestoreCases(runner, scale, repeat, image_specs(scale)["full"])
        self._objstore: ObjectStoreCases | None = None

    @property
    def objstore(self) -> ObjectStoreCases:
        """The issue 18 cases (made on first use: they need the lab's gateway)."""
        if self._objstore is None:
            self._objstore = ObjectStoreCases(self.lab, self.runner, self.repeat, self.specs["full"])
        return self._objstore

    def cases(self) -> list[tuple[str, list[str], Callable[[], list[CaseResult]]]]:
        """(name, image keys used, function) in the order they run."""
        if self.disk:
            return [
                (
                    "full-25-disk",
                    ["disk-sparse"],
                    lambda: [self.full_case("full-25-disk", "disk-sparse", "25% allocated image, BlueStore OSD")],
                ),
                (
                    "full-100-disk",
                    ["disk-full"],
                    lambda: [self.full_case("full-100-disk", "disk-full", "fully allocated image, BlueStore OSD")],
                ),
                ("incremental-disk", ["disk-full"], lambda: [self.incremental_case("incr-1-disk", "disk-full", BLOCK)]),
            ]
        mixed = ["full", "mix-0", "mix-1", "mix-2"]
        return [
            ("full-100", ["full"], lambda: [self.full_case("full-100", "full", "fully allocated image")]),
            ("full-25", ["sparse"], lambda: [self.full_case("full-25", "sparse", "25% allocated image")]),
            (
                "sparse-16x",
                ["sparse16"],
                lambda: [self.full_case("sparse-16x", "sparse16", "16x larger image, same allocated data as full-25")],
            ),
            ("incremental", ["full"], lambda: [self.incremental_case("incr-1", "full", BLOCK)]),
            (
                "incremental-small",
                ["small"],
                lambda: [self.incremental_case("incr-1-small", "small", self.scale.small_write)],
            ),
            ("mixed", mixed, lambda: [self.mixed_case(w, mixed) for w in (1, 2, 4)]),
            ("compress", ["full"], lambda: [self.compression_case("zstd", "full")]),
            # Issue 18: the same image into a block repository on the lab's RADOS Gateway.
            ("s3-full", ["full"], lambda: [self.objstore.full_case(encrypted=False)]),
            ("s3-put", ["full"], lambda: [self.objstore.put_case()]),
            ("s3-incr", ["full"], lambda: [self.objstore.incremental_case(self.scale.change_fraction)]),
            ("s3-dedup", ["full"], lambda: [self.objstore.dedup_case(min(self.repeat, 2))]),
            ("s3-full-enc", ["full"], lambda: [self.objstore.full_case(encrypted=True)]),
            ("s3-full-http", ["full"], lambda: [self.objstore.full_case(encrypted=False, tls=False)]),
            # Issue 19; these write changes into the image (the chain), so they come after the
            # backup cases that use it.
            ("restore-rbd", ["full"], lambda: self.restore.rbd_cases()),
            ("restore-file", ["full"], lambda: self.restore.file_cases()),
            ("verify", ["full"], lambda: [self.restore.verify_case()]),
            ("serve", ["full"], lambda: self.restore.serve_cases()),
            ("large", ["large"], lambda: [self.full_case("large", "large", "single large image")]),
        ]

    def run(self, only: set[str] | None) -> list[CaseResult]:
        """Run the selected cases (all when `only` is None)."""
        selected = [c for c in self.cases() if only is None or c[0] in only]
        last_use: dict[str, int] = {}
        for index, (_, keys, _) in enumerate(selected):
            for key in keys:
                last_use[key] = index
        try:
            for index, (name, keys, function) in enumerate(selected):
                for key in keys:
                    if key not in self.lab.images:
                        spec = self.specs[key]
                        alive = (
                            sum(s.allocated for s in self.lab.images.values() if s.pool == spec.pool) + spec.allocated
                        )
                        # The disk OSD is checked by `ensure_space` alone (its size is set by lab.sh).
                        if spec.pool == POOL and alive > DATA_BUDGET:
                            raise RuntimeError(f"{alive // MIB} MiB of data at once is over the lab's budget")
                        self.lab.create(self.specs[key])
                log(f"case {name}")
                self.results += function()
                for key in keys:
                    if last_use[key] == index:
                        self.lab.remove(key)
        finally:
            self.restore.close()
            if self._objstore is not None:
                self._objstore.close()
        return self.results

    def warm_up(self, images: Sequence[ImageSpec]) -> dict[str, str]:
        """One untimed backup: its snapshots are there for `rbd export`; warms both caches."""
        repo = self.runner.new_repo()
        result = self.runner.ours(repo, images, workers=len(images), kind="full")
        self.runner.drop_repo(repo)
        return result.snapshots

    def full_case(self, name: str, key: str, description: str) -> CaseResult:
        """Our full backup of one image against `rbd export` of the same snapshot."""
        spec = self.specs[key]
        result = CaseResult(name, description, spec.allocated, spec.size, "rbd export")
        snaps = self.warm_up([spec])
        for i in range(self.repeat):
            # Alternate the order: noise that drifts over time then hits both sides alike.
            for side in ("ours", "theirs") if i % 2 == 0 else ("theirs", "ours"):
                if side == "ours":
                    repo = self.runner.new_repo()
                    run_ = self.runner.ours(repo, [spec], workers=1, kind="full")
                    self.runner.drop_repo(repo)
                    snaps = run_.snapshots
                    result.ours.append(run_.sample)
                else:
                    result.theirs.append(self.runner.theirs_export([(spec, snaps[spec.name])], 1))
            log(f"  {name} {i + 1}/{self.repeat}: {summary_line(result)}")
        return result

    def compression_case(self, name: str, key: str) -> CaseResult:
        """Our full backup with `--compress zstd` (default level) against ours without.

        The images hold random data, which does not compress: zstd's worst case for time per
        byte stored.
        """
        spec = self.specs[key]
        result = CaseResult(
            name, "fully allocated image, --compress zstd vs none", spec.allocated, spec.size, "ours, uncompressed"
        )
        self.warm_up([spec])
        for i in range(self.repeat):
            for side in ("ours", "theirs") if i % 2 == 0 else ("theirs", "ours"):
                repo = self.runner.new_repo()
                extra = ["--compress", "zstd"] if side == "ours" else []
                run_ = self.runner.ours(repo, [spec], workers=1, kind="full", extra=extra)
                self.runner.drop_repo(repo)
                (result.ours if side == "ours" else result.theirs).append(run_.sample)
            log(f"  {name} {i + 1}/{self.repeat}: {summary_line(result)}")
        return result

    def mixed_case(self, workers: int, keys: Sequence[str]) -> CaseResult:
        """Four images of mixed sizes in one run of ours with `workers`; `workers` rbd exports at once."""
        specs = [self.specs[k] for k in keys]
        result = CaseResult(
            f"mixed-w{workers}",
            f"4 images ({'+'.join(str(s.size // MIB) for s in specs)} MiB), {workers} at once",
            sum(s.allocated for s in specs),
            sum(s.size for s in specs),
            f"rbd export x{workers}",
            image_count=len(specs),
        )
        snaps = self.warm_up(specs)
        for i in range(self.repeat):
            for side in ("ours", "theirs") if i % 2 == 0 else ("theirs", "ours"):
                if side == "ours":
                    repo = self.runner.new_repo()
                    run_ = self.runner.ours(repo, specs, workers=workers, kind="full")
                    self.runner.drop_repo(repo)
                    snaps = run_.snapshots
                    result.ours.append(run_.sample)
                else:
                    pairs = [(s, snaps[s.name]) for s in specs]
                    result.theirs.append(self.runner.theirs_export(pairs, workers))
            log(f"  {result.name} {i + 1}/{self.repeat}: {summary_line(result)}")
        return result

    def incremental_case(self, name: str, key: str, write: int) -> CaseResult:
        """Our incremental against `rbd export-diff` of the same change.

        Each repeat: a full backup into a new repository, our snapshot B of the unchanged image,
        a change of `change_fraction` of the image in writes of `write` bytes spread evenly over
        it, our incremental, then `rbd export-diff` from B to our new snapshot.
        """
        spec = self.specs[key]
        count = max(1, round(spec.size * self.scale.change_fraction / write))
        extents = [(i * (spec.size // count) // write * write, write) for i in range(count)]
        touched = len({offset // BLOCK for offset, _ in extents})
        kind = "whole 4 MiB blocks" if write == BLOCK else f"scattered {write // 1024} KiB writes"
        case = CaseResult(
            name,
            f"{self.scale.change_fraction:.0%} of {spec.size // MIB} MiB changed: {count} {kind}",
            count * write,
            spec.size,
            "rbd export-diff",
        )
        base = f"{NAME_PREFIX}base"
        for i in range(self.repeat):
            # The change copies every touched object (the snapshot keeps the old one).
            ensure_space(touched * BLOCK, spec.osd)
            repo = self.runner.new_repo()
            full = self.runner.ours(repo, [spec], workers=1, kind="full")
            case.snapshot_ops.setdefault("rbd snap create", []).append(
                timed(["rbd", "snap", "create", "--no-progress", f"{spec.image}@{base}"])
            )
            write_extents(spec.image, spec.size, extents, salt=1 + i)
            incr = self.runner.ours(repo, [spec], workers=1, kind="incremental")
            case.ours.append(incr.sample)
            case.ours_full.append(full.sample)
            case.theirs.append(self.runner.theirs_export_diff(spec, base, incr.snapshots[spec.name]))
            # Removes base: the next repeat takes it again.
            case.stock.append(self.runner.stock_incremental(spec, base))
            self.runner.drop_repo(repo)
            log(f"  {case.name} {i + 1}/{self.repeat}: {summary_line(case)}")
        return case
