"""``python -m virt_rbd_backup``: the same as the ``virt-rbd-backup`` command."""

import sys

from .cli import main

sys.exit(main())
