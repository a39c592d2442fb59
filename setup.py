"""Package discovery for the wheel; all other metadata lives in pyproject.toml.

Code packages (``analysis``, ``app`` and their sub-packages) are discovered.
The shipped data folders travel as two data-only packages, so that a
non-editable install has its pages and assets: ``assets/`` as
``repscope_assets`` (found by analysis/paths.py) and ``pages/`` as
``repscope_pages`` (found by app/paths.py). pyproject.toml cannot map a
discovered tree and renamed data folders at once, hence this file.
"""

from setuptools import find_packages, setup

setup(
    packages=find_packages(include=["analysis", "analysis.*", "app", "app.*"])
    + ["repscope_assets", "repscope_pages"],
    package_dir={"repscope_assets": "assets", "repscope_pages": "pages"},
    package_data={
        "repscope_assets": ["*.yaml", "*.md", "*/*", "*/*/*"],
        "repscope_pages": ["*.py"],
    },
    exclude_package_data={"repscope_assets": ["screenshots/*"]},
)
