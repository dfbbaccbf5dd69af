"""The original tool's scripting API, backed by the Rust core.

Scripts written against the original ``virt.py`` and ``main.py`` keep working with one changed
import::

    from virt_rbd_backup.compat import config, main, virt

    connection = virt.VirtConnection(config.LIBVIRT_CONNECTION)
    for domain_images in connection.list_virtrbd_images():
        ok, message = main.process_backup(domain_images)
    main.run_parallel()

- :mod:`virt_rbd_backup.compat.config`: the original's ``config.py`` (``NUMBER_OF_PROCESSES``,
  ``LIBVIRT_CONNECTION``, ``TARGET_REPO``, ``TARGET_KEYFILE``), read as the command line reads
  it.
- :mod:`virt_rbd_backup.compat.virt`: ``VirtConnection(uri).list_virtrbd_images()``, a list per
  domain of ``VirtRBDImage(domain, name, pool, username, secret, snapshot_name)``.
- :mod:`virt_rbd_backup.compat.main`: ``process_backup(domain_images)`` returning
  ``(ok, message)`` and ``run_parallel()``; backups go to the restic repository of the
  configuration, as the original's did, and print the original's lines.

The differences from the original are documented where they are: ``domain`` is a small
stand-in for libvirt's domain object, ``secret`` is redacted unless asked for, and
``process_backup`` backs up all RBD disks of a domain together.
"""

from . import config, main, virt

__all__ = ["config", "main", "virt"]
