"""Package discovery for the `tune` import package, whose source lives in core/.

pyproject.toml holds all metadata; setuptools' automatic discovery cannot map a folder named
core/ onto the package name tune, so the packages are found here, every one under core/.
"""

from setuptools import find_packages, setup

setup(packages=["tune", *(f"tune.{name}" for name in find_packages("core"))])
