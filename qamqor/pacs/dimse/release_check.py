"""Checks the installed pynetdicom against what the DICOM node's guard and fast path were
written for: ``python -m qamqor.pacs.dimse.release_check [--fingerprints]``.

How to check a new pynetdicom release with it: ``qamqor/pacs/dimse/fastpath.py``'s docstring.
"""

from __future__ import annotations

import sys

import pynetdicom

from qamqor.pacs.dimse import fastpath, guard


def main(arguments: list[str]) -> int:
    """What the guard and the fast path find in the installed pynetdicom (status 1 where
    either cannot be used as it is); with ``--fingerprints``, the fingerprints to record."""
    every = {**guard.FINGERPRINTS, **fastpath.FINGERPRINTS}
    if "--fingerprints" in arguments:
        for name in every:
            function = guard.pynetdicom_function(name)
            print(f'    "{name}": "{guard.fingerprint(function) if function else None}",')
        return 0
    version, written_for = pynetdicom.__version__, fastpath.WRITTEN_FOR
    print(f"pynetdicom {version}; the guard and the fast path were written for {written_for}")
    missing = guard.missing_internals()
    changed = guard.changed_functions(every)
    for problem in missing:
        print(f"guard: {problem} (the node refuses to start)")
    for name in changed:
        owner = "guard" if name in guard.FINGERPRINTS else "fast path"
        print(f"{owner}: {name} differs from {fastpath.WRITTEN_FOR}'s")
    reason = fastpath.unavailable("auto")
    print(f"fast path: {'used' if reason is None else 'not used, ' + reason}")
    print(f"3.0.4 race fix: {'applied' if fastpath.race_fix_applies() else 'not applied'}")
    return 1 if missing or changed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
