"""The configuration reference of docs/configuration.md, generated from conf/pipeline.toml: every
key, its default and the comment above it, one table per section.

    python -m bp_spark.config_reference > /tmp/reference.md   # then paste it under "## Reference"

``tests/test_docs.py`` fails when the document and the file part ways.
"""

from __future__ import annotations

import re
import sys
import tomllib

from bp_spark.versions import ROOT

DEFAULTS = ROOT / "conf" / "pipeline.toml"
_KEY = re.compile(r"^([a-z0-9_]+)\s*=")


def _cell(text: str) -> str:
    return text.replace("|", "\\|").strip()


def reference_markdown() -> str:
    """One ``### [section]`` table per section of conf/pipeline.toml: key, default, comment."""
    text = DEFAULTS.read_text()
    defaults = tomllib.loads(text)
    out: list[str] = []
    # A comment describes the keys under it, up to a blank line or the next comment.
    section, comment, after_key = "", [], False
    for line in text.splitlines():
        stripped = line.strip()
        if stripped.startswith("[") and stripped.endswith("]"):
            section, comment = stripped[1:-1], []
            out += ["", f"### [{section}]", "", "| key | default | meaning |", "| --- | --- | --- |"]
        elif stripped.startswith("#"):
            comment = [] if after_key else comment
            comment.append(stripped.lstrip("#").strip())
            after_key = False
        elif section and (match := _KEY.match(stripped)):
            key = match.group(1)
            default = defaults[section][key]
            shown = str(default).lower() if isinstance(default, bool) else repr(default)
            out.append(f"| `{section}.{key}` | `{_cell(shown)}` | {_cell(' '.join(comment))} |")
            after_key = True
        elif not stripped:
            comment, after_key = [], False
    return "\n".join(out).strip() + "\n"


if __name__ == "__main__":
    sys.stdout.write(reference_markdown())
