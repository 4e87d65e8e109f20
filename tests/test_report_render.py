"""The Markdown report: sections, relative figure links, environment and commands."""

from __future__ import annotations

from mclrec import __version__
from mclrec.report.report import environment_info, figure_link, render_report, write_report


def test_environment_info_has_the_standard_keys():
    env = environment_info()
    assert set(env) == {"python", "torch", "mclrec", "device", "cpu_count", "platform"}
    assert env["mclrec"] == __version__ and env["cpu_count"] >= 1


def test_figure_links_are_relative_to_the_report(tmp_path):
    link = figure_link(tmp_path / "reports" / "figures" / "fig3.png", tmp_path / "reports" / "report.md", "Fig. 3")
    assert link == "![Fig. 3](figures/fig3.png)"
    assert figure_link(tmp_path / "figs" / "a.png", tmp_path / "reports" / "r.md", "a") == "![a](../figs/a.png)"


def test_render_report(tmp_path):
    env = {"python": "3.12.1", "torch": "2.4.0", "mclrec": "0.1.0", "device": "cpu", "cpu_count": 8, "platform": "Linux", "gpu": None}
    text = render_report([("Table 3", "| a |\n|---|\n| 1 |\n"), ("Figure 3", "![f](figures/f.png)")], env,
                         ["mclrec train beauty mclrec", "mclrec report"])
    assert text.startswith("# MCLRec reproduction report\n\n## Table 3\n\n| a |\n|---|\n| 1 |\n\n## Figure 3\n")
    assert "| python | 3.12.1 |\n| torch | 2.4.0 |" in text and "| gpu | – |" in text
    assert "```sh\nmclrec train beauty mclrec\nmclrec report\n```\n" in text
    assert text.index("## Environment") < text.index("## Commands")
    write_report(text, tmp_path / "out" / "report.md")
    assert (tmp_path / "out" / "report.md").read_text(encoding="utf-8") == text
    assert "No commands recorded." in render_report([], env, [])
