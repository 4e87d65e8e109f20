"""A pytest hook the suite's conftest.py uses (kept free of torch, so a probe project can load it quickly)."""

import pytest


@pytest.hookimpl(trylast=True)
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Make `xdist_group` markers group again under `--dist loadgroup` (pyproject.toml's addopts).

    pytest-xdist (3.8) tags a grouped test on each worker by appending `@<group>` to `item._nodeid`, and its
    scheduler sends the tests that share a tag to one worker. pytest 9.2 no longer reads `_nodeid` (a node's id is
    `item._id`), so the tag was lost and grouped tests spread over the workers: tests that run Snakemake and DVC in
    the repository itself ran side by side, and module fixtures behind a group were built once per worker. This
    writes the same tag where pytest reads it; where xdist's own tag took effect it does nothing. Upstream:
    pytest-dev/pytest-xdist#1386 (a fix is proposed in #1388); drop this hook once the lock has a release with it.
    """
    if not getattr(config.option, "loadgroup", False):
        return
    for item in items:
        names = sorted({str(mark.args[0] if mark.args else mark.kwargs.get("name", "default"))
                        for mark in item.iter_markers("xdist_group")})
        tag = "@" + "_".join(names)
        if names and not item.nodeid.endswith(tag) and hasattr(item, "_id"):
            from _pytest.nodeid import NodeId  # pytest >= 9.2, where `_id` holds the id

            item._id = NodeId.parse(item.nodeid + tag)
