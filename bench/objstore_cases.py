"""The object-store cases of issue 18: backups into a block repository on the lab's RADOS Gateway.

The same 1 GiB image (the benchmark's fully allocated one) is backed up into an `s3://`
repository on the lab's gateway (HTTPS with the lab's CA, as an off-site repository is reached)
and into a folder repository (the default layout), each run a child process measured like every
other (`measure.Runner`):

- `s3-full`: a full backup into a fresh prefix against a full into a fresh folder; the ratio is
  the folder's wall time over the gateway's (target: >= 0.7).
- `s3-incr`: a 1% incremental (whole 4 MiB blocks, as `incr-1`) after a full, into each; what
  it costs is compared with what changed (bytes read from Ceph, bytes the repository grew by).
- `s3-put`: our full into a fresh prefix against the same bytes uploaded by `curl --parallel`
  alone (4 MiB objects from RAM, as many at once as our upload workers, no Ceph read, no
  hashing, no encryption): the most this gateway takes on this machine, so how much of it our
  client gets, and the ceiling any client has against the folder side of `s3-full`.
- `s3-dedup`: two copies of the image (`rbd cp`: clones of one golden image, each its own
  domain) backed up one after the other into one prefix; the bytes the second added over the
  bytes the first added (target: <= 5%).

What a repository holds is measured from outside the tool: the S3 listing's object sizes
(requests signed by curl, as the lab tests do) and the folder's file sizes. Every run uses a
fresh prefix, removed (object by object) after its case; `--repo-key-file` encrypts when the
case says so.
"""

from __future__ import annotations

import base64
import os
import re
import shutil
import subprocess
import time
import urllib.parse
import uuid
import xml.etree.ElementTree as ET
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from lab_images import BLOCK, MIB, ImageSpec, Lab, ensure_space, log, write_extents
from measure import CaseResult, Runner, Sample, merge, run_measured
from report import summary_line

PREFIX_ROOT = "vrb-bench"
"""Every prefix the benchmark writes under starts with this (`--cleanup` removes them)."""
UPLOAD_WORKERS = 4
"""Blocks our block backup uploads at once (`engine::block_backup::UPLOAD_WORKERS`)."""
PUT_STAGING = Path("/dev/shm/vrb-bench-put")
"""Where `s3-put` keeps the image's blocks as files for curl to upload (RAM, removed after)."""


class S3Bucket:
    """The lab's bucket through curl, an S3 client independent of the tool.

    The keys reach curl on its standard input, never on a command line.
    """

    def __init__(self, tls: bool = True) -> None:
        plain = os.environ["LAB_S3_ENDPOINT"]
        self.endpoint = os.environ.get("LAB_S3_TLS_ENDPOINT", plain) if tls else plain
        self.bucket = os.environ["LAB_S3_BUCKET"]
        self.region = os.environ["LAB_S3_REGION"]
        self.ca = os.environ["LAB_S3_CA"]
        text = Path(os.environ["LAB_S3_CREDENTIALS"]).read_text()
        key_id = re.search(r"aws_access_key_id\s*=\s*(\S+)", text)
        secret = re.search(r"aws_secret_access_key\s*=\s*(\S+)", text)
        if key_id is None or secret is None:
            raise RuntimeError(f"no keys in {os.environ['LAB_S3_CREDENTIALS']}")
        self.key_id, self.secret = key_id.group(1), secret.group(1)

    def repo_args(self, prefix: str, key_file: Path | None) -> list[str]:
        """The tool's options for a repository at `prefix` (encrypted with `key_file`)."""
        args = [
            "--s3-endpoint",
            self.endpoint,
            "--s3-region",
            self.region,
            "--s3-credentials",
            os.environ["LAB_S3_CREDENTIALS"],
            "--s3-ca-file",
            self.ca,
        ]
        return args + (["--repo-key-file", str(key_file)] if key_file else [])

    def location(self, prefix: str) -> str:
        """`s3://BUCKET/PREFIX`."""
        return f"s3://{self.bucket}/{prefix}"

    def _request(self, method: str, path: str, query: str = "") -> bytes:
        config = f'user = "{self.key_id}:{self.secret}"\nrequest = "{method}"\n'
        config += f'url = "{self.endpoint}/{self.bucket}/{path}{query}"\n'
        args = ["curl", "-sS", "-f", "--cacert", self.ca, "--aws-sigv4", f"aws:amz:{self.region}:s3"]
        args += ["-H", "x-amz-content-sha256: UNSIGNED-PAYLOAD", "-K", "-"]
        proc = subprocess.run(args, input=config.encode(), capture_output=True, timeout=120)
        if proc.returncode != 0:
            raise RuntimeError(f"curl {method} {path}{query}: {proc.stderr.decode(errors='replace')}")
        return proc.stdout

    def put_config(self, prefix: str, files: list[Path]) -> bytes:
        """A curl config (for `-K -`) that uploads each file to `prefix`/ under its own name."""
        lines = [
            f'user = "{self.key_id}:{self.secret}"',
            f'aws-sigv4 = "aws:amz:{self.region}:s3"',
            'header = "x-amz-content-sha256: UNSIGNED-PAYLOAD"',
            f'cacert = "{self.ca}"',
        ]
        for f in files:
            lines += [
                f'upload-file = "{f}"',
                f'url = "{self.endpoint}/{self.bucket}/{prefix}/{f.name}"',
                'output = "/dev/null"',
            ]
        return ("\n".join(lines) + "\n").encode()

    def objects(self, under: str) -> dict[str, int]:
        """Every object whose key starts with `under`, and its size."""
        found: dict[str, int] = {}
        token = ""
        while True:
            # Percent-encoded as SigV4's canonical query wants ('/' too), names sorted.
            query = "?"
            if token:
                query += "continuation-token=" + urllib.parse.quote(token, safe="") + "&"
            query += "list-type=2&prefix=" + urllib.parse.quote(under, safe="")
            root = ET.fromstring(self._request("GET", "", query=query))
            ns = {"s3": root.tag.split("}")[0].strip("{")}
            for item in root.findall("s3:Contents", ns):
                key, size = item.find("s3:Key", ns), item.find("s3:Size", ns)
                if key is not None and key.text and size is not None and size.text:
                    found[key.text] = int(size.text)
            next_token = root.find("s3:NextContinuationToken", ns)
            if next_token is None or not next_token.text:
                return found
            token = next_token.text

    def stored(self, prefix: str) -> int:
        """Bytes of every object under `prefix`/."""
        return sum(self.objects(f"{prefix}/").values())

    def remove(self, prefix: str) -> None:
        """Delete every object under `prefix`/."""
        keys = list(self.objects(f"{prefix}/"))
        with ThreadPoolExecutor(8) as pool:
            list(pool.map(lambda key: self._request("DELETE", urllib.parse.quote(key)), keys))

    def leftover_prefixes(self) -> list[str]:
        """Prefixes of earlier runs of the benchmark still in the bucket."""
        return sorted({key.split("/")[0] for key in self.objects(f"{PREFIX_ROOT}-")})


def daemon_cpu() -> dict[str, float]:
    """CPU seconds (user + system) the lab's radosgw and ceph-osd processes have used so far."""
    ticks = os.sysconf("SC_CLK_TCK")
    used: dict[str, float] = {}
    for name in ("radosgw", "ceph-osd"):
        total = 0.0
        pids = subprocess.run(["pgrep", "-x", name], capture_output=True, text=True).stdout.split()
        for pid in pids:
            try:
                fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
                total += (int(fields[11]) + int(fields[12])) / ticks
            except (OSError, IndexError, ValueError):
                continue  # exited meanwhile
        used[name] = total
    return used


def record_daemon_cpu(result: CaseResult, side: str, before: dict[str, float], after: dict[str, float]) -> None:
    """Adds what each lab daemon spent between `before` and `after` (`daemon_cpu`) to `side`'s run."""
    for daemon, seconds in after.items():
        result.daemon_cpu.setdefault(f"{side} {daemon}", []).append(seconds - before[daemon])


def folder_bytes(path: Path) -> int:
    """Bytes of the files under `path` (their sizes, as the S3 side counts objects)."""
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


class ObjectStoreCases:
    """The issue 18 cases on one image (`spec`), gateway side against folder side."""

    def __init__(self, lab: Lab, runner: Runner, repeat: int, spec: ImageSpec) -> None:
        self.lab = lab
        self.runner = runner
        self.repeat = repeat
        self.spec = spec
        self.s3 = S3Bucket()
        self.key_file = runner.target / "bench-repo.key"
        # The key file format (objstore::object_format): a header line, 32 bytes in base64.
        self.key_file.write_text("virt-rbd-backup key v1\n" + base64.b64encode(os.urandom(32)).decode() + "\n")
        self.key_file.chmod(0o600)
        self.prefixes: list[str] = []

    def new_prefix(self) -> str:
        """A fresh prefix for one run (removed by `drop_prefix`, or `close`)."""
        prefix = f"{PREFIX_ROOT}-{uuid.uuid4().hex[:10]}"
        self.prefixes.append(prefix)
        return prefix

    def drop_prefix(self, prefix: str) -> None:
        """Delete the objects of a prefix of ours."""
        self.s3.remove(prefix)
        self.prefixes.remove(prefix)

    def close(self) -> None:
        """Delete what is left under the prefixes of ours."""
        for prefix in list(self.prefixes):
            try:
                self.drop_prefix(prefix)
            except (RuntimeError, OSError) as err:
                log(f"clean-up of s3 prefix {prefix}: {err}")

    def s3_backup(
        self, prefix: str, images: list[ImageSpec], kind: str, encrypted: bool, s3: S3Bucket | None = None
    ) -> tuple[Sample, int]:
        """Our backup of `images` into `prefix`; its sample and the bytes the prefix grew by."""
        s3 = s3 or self.s3
        before = s3.stored(prefix)
        extra = s3.repo_args(prefix, self.key_file if encrypted else None)
        run_ = self.runner.ours(s3.location(prefix), images, workers=1, kind=kind, extra=extra)
        return run_.sample, s3.stored(prefix) - before

    def folder_backup(self, repo: Path, kind: str) -> tuple[Sample, int]:
        """Our backup of the image into the folder `repo`; its sample and the bytes it grew by."""
        before = folder_bytes(repo) if repo.exists() else 0
        run_ = self.runner.ours(repo, [self.spec], workers=1, kind=kind)
        return run_.sample, folder_bytes(repo) - before

    def full_case(self, encrypted: bool, tls: bool = True) -> CaseResult:
        """A full into the gateway against a full into a folder (`ours` is the gateway).

        `daemon_cpu` gets the CPU seconds the lab's radosgw and OSD spent during each run:
        on this machine they share the two vCPUs with the backup.
        """
        spec = self.spec
        name = "s3-full" + ("-enc" if encrypted else "") + ("" if tls else "-http")
        how = ("encrypted (--repo-key-file)" if encrypted else "unencrypted") + (", HTTPS" if tls else ", plain HTTP")
        s3 = self.s3 if tls else S3Bucket(tls=False)
        result = CaseResult(
            name, f"full into s3:// on the lab's RGW, {how}, vs a folder", spec.allocated, spec.size, "folder repo"
        )
        for key in ("ours", "theirs"):
            result.stored[key] = []
        # Untimed: warms both paths (the first write into a new bucket index, page caches).
        warm = self.new_prefix()
        self.s3_backup(warm, [spec], "full", encrypted, s3)
        self.drop_prefix(warm)
        for i in range(self.repeat):
            for side in ("ours", "theirs") if i % 2 == 0 else ("theirs", "ours"):
                before = daemon_cpu()
                if side == "ours":
                    ensure_space(spec.allocated)
                    before = daemon_cpu()
                    prefix = self.new_prefix()
                    sample, grew = self.s3_backup(prefix, [spec], "full", encrypted, s3)
                    after = daemon_cpu()
                    self.drop_prefix(prefix)
                else:
                    repo = self.runner.new_repo()
                    sample, grew = self.folder_backup(repo, "full")
                    after = daemon_cpu()
                    self.runner.drop_repo(repo)
                getattr(result, side).append(sample)
                result.stored[side].append(grew)
                record_daemon_cpu(result, side, before, after)
            log(f"  {name} {i + 1}/{self.repeat}: {summary_line(result)}")
        return result

    def put_case(self) -> CaseResult:
        """Our full into the gateway (HTTPS, unencrypted) against curl uploading the same blocks.

        curl uploads the image's 4 MiB blocks from files in RAM (`rbd export`, split; untimed),
        `UPLOAD_WORKERS` at once over reused connections, signed as our client signs them
        (SigV4, unsigned payload): what this gateway takes from a client that costs nothing.
        Both sides' uploads are checked by listing what they stored.
        """
        spec = self.spec
        result = CaseResult(
            "s3-put",
            "full into s3:// on the lab's RGW (HTTPS) vs curl --parallel PUT of the same blocks from RAM",
            spec.allocated,
            spec.size,
            "curl PUT",
        )
        for key in ("ours", "theirs"):
            result.stored[key] = []
        shutil.rmtree(PUT_STAGING, ignore_errors=True)
        PUT_STAGING.mkdir(parents=True)
        try:
            files = self._stage_blocks()
            argv = ["curl", "-sS", "-f", "--parallel", "--parallel-max", str(UPLOAD_WORKERS), "-K", "-"]
            for i in range(self.repeat):
                for side in ("ours", "theirs") if i % 2 == 0 else ("theirs", "ours"):
                    ensure_space(spec.allocated)
                    prefix = self.new_prefix()
                    before = daemon_cpu()
                    if side == "ours":
                        sample, grew = self.s3_backup(prefix, [spec], "full", False)
                    else:
                        started = time.perf_counter()
                        finished = run_measured([argv], 1, self.runner.scratch, stdin=self.s3.put_config(prefix, files))
                        sample = merge(finished, started, time.perf_counter())
                        grew = self.s3.stored(prefix)
                        if grew != sum(f.stat().st_size for f in files):
                            raise RuntimeError(f"curl stored {grew} bytes under {prefix}, not the image's blocks")
                    after = daemon_cpu()
                    self.drop_prefix(prefix)
                    getattr(result, side).append(sample)
                    result.stored[side].append(grew)
                    record_daemon_cpu(result, side, before, after)
                log(f"  s3-put {i + 1}/{self.repeat}: {summary_line(result)}")
        finally:
            shutil.rmtree(PUT_STAGING, ignore_errors=True)
        return result

    def _stage_blocks(self) -> list[Path]:
        """The image's data blocks as files under PUT_STAGING (holes left out, as ours does)."""
        raw = PUT_STAGING / "image.raw"
        subprocess.run(["rbd", "export", "--no-progress", self.spec.image, str(raw)], check=True, capture_output=True)
        files: list[Path] = []
        with raw.open("rb") as image:
            index = 0
            while block := image.read(BLOCK):
                if block.count(0) != len(block):
                    path = PUT_STAGING / f"b{index:06d}"
                    path.write_bytes(block)
                    files.append(path)
                index += 1
        raw.unlink()
        return files

    def incremental_case(self, change_fraction: float) -> CaseResult:
        """A 1% incremental into the gateway against one into a folder, each after its own full.

        The change is whole 4 MiB blocks spread over the image (as `incr-1`), written anew (other
        bytes) before each incremental; `ours_full` keeps the gateway's fulls.
        """
        spec = self.spec
        count = max(1, round(spec.size * change_fraction / BLOCK))
        extents = [(i * (spec.size // count) // BLOCK * BLOCK, BLOCK) for i in range(count)]
        result = CaseResult(
            "s3-incr",
            f"{change_fraction:.0%} of {spec.size // MIB} MiB changed ({count} blocks), into s3:// vs a folder",
            count * BLOCK,
            spec.size,
            "folder repo",
        )
        for key in ("ours", "theirs"):
            result.stored[key] = []
        salt = 100
        for i in range(self.repeat):
            for side in ("ours", "theirs") if i % 2 == 0 else ("theirs", "ours"):
                salt += 1
                if side == "ours":
                    ensure_space(spec.allocated + 2 * count * BLOCK)
                    prefix = self.new_prefix()
                    full, _ = self.s3_backup(prefix, [spec], "full", False)
                    write_extents(spec.image, spec.size, extents, salt=salt)
                    sample, grew = self.s3_backup(prefix, [spec], "incremental", False)
                    self.drop_prefix(prefix)
                    result.ours_full.append(full)
                else:
                    ensure_space(2 * count * BLOCK)
                    repo = self.runner.new_repo()
                    self.folder_backup(repo, "full")
                    write_extents(spec.image, spec.size, extents, salt=salt)
                    sample, grew = self.folder_backup(repo, "incremental")
                    self.runner.drop_repo(repo)
                getattr(result, side).append(sample)
                result.stored[side].append(grew)
            log(f"  s3-incr {i + 1}/{self.repeat}: {summary_line(result)}")
        return result

    def dedup_case(self, repeat: int) -> CaseResult:
        """Two copies of the image, backed up one after the other into one prefix.

        `theirs` is the first copy's backup, `ours` the second's; `stored` what each added.
        """
        spec = self.spec
        copy = self.lab.copy(spec, "clone")
        result = CaseResult(
            "s3-dedup",
            f"second of two copies of one {spec.size // MIB} MiB image, same s3:// prefix",
            spec.allocated,
            spec.size,
            "first copy",
        )
        for key in ("ours", "theirs"):
            result.stored[key] = []
        try:
            for i in range(repeat):
                ensure_space(spec.allocated)
                prefix = self.new_prefix()
                first, first_grew = self.s3_backup(prefix, [spec], "full", False)
                second, second_grew = self.s3_backup(prefix, [copy], "full", False)
                self.drop_prefix(prefix)
                result.theirs.append(first)
                result.ours.append(second)
                result.stored["theirs"].append(first_grew)
                result.stored["ours"].append(second_grew)
                log(
                    f"  s3-dedup {i + 1}/{repeat}: first copy {first_grew / MIB:.1f} MiB, "
                    f"second {second_grew / MIB:.3f} MiB"
                )
        finally:
            self.lab.remove(copy.key)
        return result
