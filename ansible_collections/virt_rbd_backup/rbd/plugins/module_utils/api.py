# -*- coding: utf-8 -*-
# Copyright: virt-rbd-backup contributors
# Apache License 2.0 (see https://www.apache.org/licenses/LICENSE-2.0)

"""The bridge from module parameters to the pip-installed ``virt_rbd_backup`` package.

The modules are clients of the package's public Python API like any other script: the work is
done by its Rust core on the managed host. This file holds what every module needs: the guarded
import, the check that an option given in the task is one the installed version knows (so an
older package fails with "upgrade" rather than a TypeError), and one way to word an error.
"""

import dataclasses
import inspect
import os
import traceback

from ansible.module_utils.basic import missing_required_lib

try:
    import virt_rbd_backup
except ImportError:
    virt_rbd_backup = None
    HAS_LIB = False
    IMPORT_ERROR = traceback.format_exc()
else:
    HAS_LIB = True
    IMPORT_ERROR = None

LIBRARY = "virt-rbd-backup"
"""The PyPI name of the package, as missing_required_lib names it."""


def require_library(module):
    """Fail the task when the package cannot be imported on the managed host."""
    if not HAS_LIB:
        module.fail_json(
            msg=missing_required_lib(LIBRARY, reason="by the modules of virt_rbd_backup.rbd (they call its Python API)"),
            exception=IMPORT_ERROR,
        )


def library_version():
    """The installed package's version (None when it is missing)."""
    return getattr(virt_rbd_backup, "__version__", None)


def accepted_options(function):
    """Names of the keyword arguments ``function`` of the installed package accepts."""
    return set(inspect.signature(function).parameters)


def call_options(module, function, options, needed=()):
    """Keyword arguments for ``function``: ``options`` without those left unset (None).

    An option that was set in the task (not None) and that the installed ``function`` does not
    accept fails the task when it is in ``needed`` (it would change what the call does), and is
    dropped otherwise (for example the number of workers, for a plan).
    """
    accepted = accepted_options(function)
    kwargs = {}
    for name, value in options.items():
        if value is None:
            continue
        if name in accepted:
            kwargs[name] = value
        elif name in needed:
            module.fail_json(
                msg="the installed %s %s does not support the option %s of %s(); upgrade it on the managed host"
                % (LIBRARY, library_version() or "(unknown version)", name, function.__name__)
            )
    return kwargs


RESTIC_OPTIONS = dict(
    restic_repo=dict(type="str"),
    restic_password_file=dict(type="path", no_log=False),
    restic_password=dict(type="str", no_log=True),
)
"""The restic options of the modules that can use a restic repository."""

RESTIC_RULES = dict(
    mutually_exclusive=[("restic_password", "restic_password_file")],
    required_by=dict(restic_password="restic_repo", restic_password_file="restic_repo"),
)
"""AnsibleModule keyword arguments that go with RESTIC_OPTIONS."""


def restic_target(module):
    """The package's restic target from the module's restic options; None without restic_repo.

    restic_password goes into this module process's environment as RESTIC_PASSWORD, where the
    core's restic processes read it: never a command line, never a file.
    """
    params = module.params
    if params["restic_repo"] is None:
        return None
    if not hasattr(virt_rbd_backup, "ResticTarget"):
        module.fail_json(
            msg="the installed %s %s cannot use restic; upgrade it on the managed host"
            % (LIBRARY, library_version() or "(unknown version)")
        )
    if params["restic_password"] is not None:
        os.environ["RESTIC_PASSWORD"] = params["restic_password"]
    return virt_rbd_backup.ResticTarget(repository=params["restic_repo"], password_file=params["restic_password_file"])


REPO_ACCESS_OPTIONS = dict(
    layout=dict(type="str", choices=["folder", "blocks"]),
    repo_key_file=dict(type="path", no_log=False),
    s3_endpoint=dict(type="str"),
    s3_region=dict(type="str"),
    s3_credentials=dict(type="path", no_log=False),
    s3_ca_file=dict(type="path"),
)
"""The options of the modules that open a repository: the package's RepoAccess (doc fragment
virt_rbd_backup.rbd.repo_access)."""


def repo_access(module):
    """The package's RepoAccess from the module's options; None when none is set."""
    params = module.params
    values = dict((name, params[name]) for name in REPO_ACCESS_OPTIONS)
    if all(value is None for value in values.values()):
        return None
    if not hasattr(virt_rbd_backup, "RepoAccess"):
        module.fail_json(
            msg="the installed %s %s cannot open block or S3 repositories; upgrade it on the managed host"
            % (LIBRARY, library_version() or "(unknown version)")
        )
    values["key_file"] = values.pop("repo_key_file")
    return virt_rbd_backup.RepoAccess(**values)


def error_message(action, exc):
    """One line that says what was attempted and why it did not happen."""
    return "%s: %s: %s" % (action, type(exc).__name__, exc)


def as_dict(value):
    """A report or plan of the package as plain JSON-shaped data."""
    if hasattr(value, "to_dict"):
        return value.to_dict()
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return dataclasses.asdict(value)
    return value
