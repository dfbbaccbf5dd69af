"""The original tool's modules, backed by the Rust core.

A script written for the original runs unchanged with its imports pointed here::

    from virt_rbd_backup.compat import ceph, virt
    from virt_rbd_backup.compat.output import restic

or with shim modules named as the original's (``virt``, ``ceph``, ``output/restic.py``,
``main``, ``config``) that re-export these: the original's own ``main.py`` runs that way
(``tests/python/test_compat_original_lab.py``).

- :mod:`virt_rbd_backup.compat.config`: the original's ``config.py`` (``NUMBER_OF_PROCESSES``,
  ``LIBVIRT_CONNECTION``, ``TARGET_REPO``, ``TARGET_KEYFILE``), found where the original found
  it and read as the command line reads it.
- :mod:`virt_rbd_backup.compat.virt`: ``VirtConnection(uri)`` with ``open()``/``close()``, the
  attribute proxy to the libvirt connection, ``list_virtrbd_images()`` returning
  ``VirtRBDImage(domain, name, pool, username, secret, snapshot_name)`` records.
- :mod:`virt_rbd_backup.compat.ceph`: ``CephConnection(rados_id, key)`` with one pool and
  image open at a time, snapshots created, protected and removed, the image read by offset.
- :mod:`virt_rbd_backup.compat.output.restic`: ``backup(repo, keyfile, image, filename=...)``
  streaming an image into ``restic backup --stdin``.
- :mod:`virt_rbd_backup.compat.main`: ``process_backup(domain_images)``, ``worker`` and
  ``run_parallel()`` with the original's messages, on the tool's backup engine.

Each module's doc lists its differences from the original; the README's "From the original"
section has them in one table. The one that matters most: snapshots are never left behind,
even by the original's ``main.py``, which removed them only when everything succeeded.
"""

from . import ceph, config, main, output, virt

__all__ = ["ceph", "config", "main", "output", "virt"]
