"""`python -m tune`: the unambiguous form (torchtune also installs a `tune` script).

`python -m` puts the working directory first on sys.path, so a folder named `tune` there (a
checkout of tune, say) would stand in for the package as a namespace package with nothing in
it. Then the working directory gives way to the installed package for this command.
"""

import os
import sys

if getattr(sys.modules.get("tune"), "__file__", None) is None:  # a namespace, not tune itself
    for name in [m for m in sys.modules if m == "tune" or m.startswith("tune.")]:
        if name != __name__:
            del sys.modules[name]
    here = os.getcwd()
    sys.path[:] = [p for p in sys.path if p not in ("", ".", here)]

from tune.cli import main  # noqa: E402

if __name__ == "__main__":
    main()
