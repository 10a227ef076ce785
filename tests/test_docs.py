"""The README and docs/ stay true: every command the README shows runs (``--help`` of each job and
bench it names, with the flags it uses), every setting they name exists in conf/pipeline.toml
with the default the configuration reference gives, every link leads somewhere, and the README
stays a front door (a five-minute read)."""

from __future__ import annotations

import re
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from bp_spark.config import RETIRED_KEYS
from bp_spark.config_reference import reference_markdown
from bp_spark.versions import ROOT

README = ROOT / "README.md"
DOCS = sorted((ROOT / "docs").glob("*.md"))
PAGES = [README, *DOCS]
DEFAULTS = tomllib.loads((ROOT / "conf" / "pipeline.toml").read_text())
SCRIPT = re.compile(r"\b((?:jobs|bench)/[a-z_]+\.py)\b")
SETTING = re.compile(rf"`(?:BP_[A-Z_]+=)?({'|'.join(DEFAULTS)})\.([a-z0-9_]+)(?![\w.])")  # not a dotted class name
# Fields of the documents, not settings: where a document came from in Kafka.
DOCUMENT_FIELDS = {("kafka", field) for field in ("topic", "partition", "offset", "timestamp", "entry")}
# Keys an earlier version read, which the upgrade notes and the performance history name.
RETIRED = {tuple(key.split(".")) for key in RETIRED_KEYS}


def _slug(heading: str) -> str:
    """A heading's anchor, as GitHub makes it."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def test_the_readme_is_a_front_door() -> None:
    size = len(README.read_bytes())
    assert size <= 14_000, f"README.md is {size:,} bytes: move the detail into docs/ (a third of the 39 KB it once was)"
    text = README.read_text()
    for needed in ("make demo", "make test", "## Run it on your own feed", "## What lands where", "## Operating it"):
        assert needed in text


@pytest.mark.parametrize("page", PAGES, ids=[p.name for p in PAGES])
def test_every_link_leads_somewhere(page: Path) -> None:
    for target in re.findall(r"\]\(([^)\s]+)\)", page.read_text()):
        if re.match(r"(https?:|mailto:)", target):
            continue
        path, _, anchor = target.partition("#")
        linked = (page.parent / path).resolve() if path else page
        assert linked.exists(), f"{page.name} links to {target}, which does not exist"
        if anchor and linked.suffix == ".md":
            headings = {_slug(h) for h in re.findall(r"(?m)^#+ (.+)$", linked.read_text())}
            assert anchor in headings, f"{page.name} links to {target}: no such heading in {linked.name}"


def test_every_setting_the_docs_name_exists() -> None:
    for page in PAGES:
        for section, key in set(SETTING.findall(page.read_text())) - DOCUMENT_FIELDS - RETIRED:
            assert key in DEFAULTS[section], f"{page.name} names {section}.{key}, which conf/pipeline.toml does not have"


def test_the_configuration_reference_is_conf_pipeline_toml() -> None:
    text = (ROOT / "docs" / "configuration.md").read_text()
    assert text.endswith(reference_markdown()), (
        "docs/configuration.md's reference differs from conf/pipeline.toml: regenerate it with "
        "`python -m bp_spark.config_reference` and paste it under '## Reference'")
    for section, keys in DEFAULTS.items():
        for key in keys:
            assert f"`{section}.{key}`" in text


def _readme_scripts() -> list[str]:
    return sorted(set(SCRIPT.findall(README.read_text())))


@pytest.mark.parametrize("script", _readme_scripts())
def test_every_script_the_readme_shows_runs_with_the_flags_it_shows(script: str) -> None:
    result = subprocess.run([sys.executable, str(ROOT / script), "--help"], capture_output=True, text=True,
                            timeout=120, cwd=ROOT)
    assert result.returncode == 0, f"{script} --help failed: {result.stderr[-1500:]}"
    shown = set()
    for line in README.read_text().splitlines():
        if script in line:
            shown.update(re.findall(r"(?<![\w-])(--[a-z][a-z-]+)", line.split(script, 1)[1]))
    missing = sorted(flag for flag in shown if flag not in result.stdout)
    assert not missing, f"the README shows {script} with {missing}, which its --help does not offer"
