# -*- coding: utf-8 -*-
# Copyright: virt-rbd-backup contributors
# Apache License 2.0 (see https://www.apache.org/licenses/LICENSE-2.0)

from __future__ import absolute_import, division, print_function

__metaclass__ = type


class ModuleDocFragment(object):
    """How the modules open a repository beyond its location (virt_rbd_backup.RepoAccess)."""

    DOCUMENTATION = r"""
options:
  layout:
    description:
      - The layout of a new repository in a folder. C(folder) stores sparse raw images and rbd
        diffs (readable with stock tools; the default), C(blocks) stores each 4 MiB block once
        (deduplicated, optionally encrypted, every backup complete on its own).
      - An C(s3://BUCKET/PREFIX) repository always has the block layout; an existing repository
        keeps its own, and asking for the other one fails the task.
    type: str
    choices: [folder, blocks]
  repo_key_file:
    description:
      - Key file (mode 0600) on the managed host of an encrypted block repository. A new
        repository creates it when it is missing; keep a copy off the host, without it the
        backups cannot be read.
    type: path
  s3_endpoint:
    description: Endpoint of the S3-compatible store of an C(s3://) repository, C(https://HOST:PORT).
    type: str
  s3_region:
    description: The region the endpoint signs for.
    type: str
  s3_credentials:
    description:
      - AWS shared credentials file (mode 0600) on the managed host with the S3 keys. Without it
        the keys come from the C(AWS_*) environment of the module. The keys themselves are never
        an option.
    type: path
  s3_ca_file:
    description: CA certificates (PEM) on the managed host for the endpoint's TLS.
    type: path
"""
